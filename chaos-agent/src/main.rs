fn main() -> std::process::ExitCode {
    chaos_agent::cli::main()
}
