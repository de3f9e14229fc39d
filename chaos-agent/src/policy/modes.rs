//! The values of shadow mode, flapping schedules and burst loss, and the
//! arithmetic of the burst-loss chain, shared by the loader (`raw.rs`,
//! `validate.rs`) and the encoders of kernel rules.
//!
//! Burst loss is a two-state (simple Gilbert) chain per rule: every packet
//! is lost in state Bad, none in Good. From Bad the chain leaves with
//! probability `r` after each packet, so runs of losses are geometric with
//! mean `1/r`: `burst` packets asks for `r = 1/burst`. Entering Bad with
//! probability `p` per good packet makes the long-run loss `L = p/(p+r)`,
//! so `p = r·L/(1-L)`. That needs `L < 100 %` (no way back to Good is no
//! burst at all) and `p ≤ 1`, that is `L ≤ burst/(burst+1)`: with bursts
//! of 1 packet, at most every other packet can be lost.
//!
//! It is netem's `loss gemodel p r 1-h 1-k` with `1-h = 100%` (loss in
//! Bad) and `1-k = 0%` (loss in Good), p and r in percent. netem moves
//! the chain first and decides a packet by the state it moved to, we
//! decide by the state a packet finds and then move: the sequence of
//! states, and so the loss process, is the same Markov chain.

use super::{model::Percent, values::quoted};

pub(crate) const MODE_EXPECTED: &str = "one of enforce, shadow";

/// `spec.mode`.
pub fn parse_mode(s: &str) -> Result<super::model::Mode, String> {
    match s {
        "enforce" => Ok(super::model::Mode::Enforce),
        "shadow" => Ok(super::model::Mode::Shadow),
        _ => Err(format!("expected {MODE_EXPECTED}, found {}", quoted(s))),
    }
}

/// The longest mean run of losses a burst may ask for, in packets.
pub const MAX_BURST: f64 = 1_000_000.0;

pub(crate) const BURST_EXPECTED: &str = "a mean run of lost packets from 1 to 1000000 (8, or 2.5)";

/// `loss.burst`: a plain decimal number from 1 to [`MAX_BURST`].
pub fn parse_burst(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let bad = || format!("expected {BURST_EXPECTED}, found {}", quoted(s));
    // As for percentages: `f64::from_str` takes "inf", "nan" and "1e2" too.
    if t.is_empty()
        || !t.chars().all(|c| c.is_ascii_digit() || c == '.')
        || t.starts_with('.')
        || t.ends_with('.')
    {
        return Err(bad());
    }
    let v: f64 = t.parse().map_err(|_| bad())?;
    if !(1.0..=MAX_BURST).contains(&v) {
        return Err(bad());
    }
    Ok(v)
}

/// The chain's transition probabilities for a long-run loss of `percent`
/// in runs of `burst` packets on average: (p: Good to Bad, r: Bad to
/// Good), both in [0, 1]. `Err` says why no chain does that.
pub fn gilbert(percent: Percent, burst: f64) -> Result<(f64, f64), String> {
    let loss = percent.0 / 100.0;
    let r = 1.0 / burst;
    if loss >= 1.0 {
        return Err(
            "100% loss has no bursts (every packet is lost); leave burst out, or ask for less than 100%"
                .to_owned(),
        );
    }
    let p = r * loss / (1.0 - loss);
    if p > 1.0 + 1e-12 {
        let max = 100.0 * burst / (burst + 1.0);
        return Err(format!(
            "{percent} loss in runs of {burst} packets on average is impossible: between runs at least one packet gets through, so with burst {burst} the loss is at most {max:.4}%; ask for a longer burst or less loss"
        ));
    }
    Ok((p.min(1.0), r))
}

/// netem's equivalent of `loss: {percent, burst}`, for the docs and the
/// benchmark: `loss gemodel P% R% 100% 0%`.
pub fn netem_gemodel(percent: Percent, burst: f64) -> Option<String> {
    let (p, r) = gilbert(percent, burst).ok()?;
    Some(format!(
        "loss gemodel {}% {}% 100% 0%",
        trim(100.0 * p),
        trim(100.0 * r)
    ))
}

/// A percentage with up to 4 decimals, without trailing zeros.
fn trim(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::Mode;

    #[test]
    fn modes() {
        assert_eq!(parse_mode("shadow"), Ok(Mode::Shadow));
        assert_eq!(parse_mode("enforce"), Ok(Mode::Enforce));
        assert_eq!(
            parse_mode("Shadow"),
            Err(r#"expected one of enforce, shadow, found "Shadow""#.into())
        );
    }

    #[test]
    fn bursts() {
        assert_eq!(parse_burst("8"), Ok(8.0));
        assert_eq!(parse_burst(" 2.5 "), Ok(2.5));
        assert_eq!(parse_burst("1"), Ok(1.0));
        assert_eq!(parse_burst("1000000"), Ok(MAX_BURST));
        for bad in [
            "0", "0.5", "1000001", "1e2", "inf", "nan", "-2", "", ".5", "5.", "x",
        ] {
            assert!(parse_burst(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chain_parameters() {
        let (p, r) = gilbert(Percent(10.0), 8.0).unwrap();
        assert!((r - 0.125).abs() < 1e-12);
        assert!((p - 0.125 / 9.0).abs() < 1e-12);
        // Long-run loss p / (p + r) is the percentage asked for.
        assert!((p / (p + r) - 0.1).abs() < 1e-12);
        assert_eq!(
            netem_gemodel(Percent(10.0), 8.0).unwrap(),
            "loss gemodel 1.3889% 12.5% 100% 0%"
        );
        // Burst 1: at most every other packet.
        assert_eq!(gilbert(Percent(50.0), 1.0).unwrap(), (1.0, 1.0));
        let e = gilbert(Percent(60.0), 1.0).unwrap_err();
        assert!(e.contains("at most 50.0000%"), "{e}");
        assert!(
            gilbert(Percent(100.0), 8.0)
                .unwrap_err()
                .contains("100% loss")
        );
        assert_eq!(gilbert(Percent(0.0), 8.0).unwrap().0, 0.0);
        assert!(gilbert(Percent(88.0), 8.0).is_ok());
        assert!(gilbert(Percent(89.0), 8.0).is_err());
    }
}
