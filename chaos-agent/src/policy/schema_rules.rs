//! What the JSON Schema says of the raw structs beyond their fields (see
//! `schema.rs`): patterns of single fields and the `transform`s that say
//! which fields go together. Apart from `schema.rs` so that the raw model
//! (`raw.rs`), which names them in its attributes, and the schema builder,
//! which names the raw model, do not import each other.

use schemars::Schema;
use serde_json::{Value, json};

/// 1 to 65535, without leading zeros.
macro_rules! port {
    () => {
        "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
    };
}
pub(crate) use port;

/// `abortWhen.probe.http`: `http://` and no whitespace.
pub(crate) const HTTP_URL: &str = r"^http://\S+$";
/// `abortWhen.probe.tcp`: a bracketed IPv6 address or a host without `:`,
/// `/`, brackets or whitespace, then a port.
pub(crate) const HOST_PORT: &str = concat!(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):", port!(), "$");

// `transform`s of the raw structs: which fields go together.

fn exactly_one(schema: &mut Schema, fields: &[&str]) {
    let one_of: Vec<Value> = fields.iter().map(|f| json!({ "required": [f] })).collect();
    schema.insert("oneOf".into(), one_of.into());
}

/// A fault is a network fault or a syscall fault.
pub(crate) fn one_fault_kind(schema: &mut Schema) {
    exactly_one(schema, &["network", "syscall"]);
}

/// A network fault has one action.
pub(crate) fn one_action(schema: &mut Schema) {
    exactly_one(
        schema,
        &["loss", "delay", "corrupt", "duplicate", "bandwidth"],
    );
}

/// A syscall fault has one target.
pub(crate) fn one_target(schema: &mut Schema) {
    exactly_one(schema, &["pid", "comm", "cgroup", "unit"]);
}

/// A probe is http (with its `expectStatus`) or tcp.
pub(crate) fn one_probe(schema: &mut Schema) {
    schema.insert(
        "oneOf".into(),
        json!([
            { "required": ["http"] },
            { "required": ["tcp"], "not": { "required": ["expectStatus"] } }
        ]),
    );
}

/// A match selects by `unit` or by `cgroup`, not both.
pub(crate) fn unit_or_cgroup(schema: &mut Schema) {
    schema.insert("not".into(), json!({ "required": ["unit", "cgroup"] }));
}
