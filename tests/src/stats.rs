//! Statistics for probabilistic faults: a fault that drops each packet with
//! probability `p` drops a Binomial(n, p) number of `n` packets, whose mean
//! is `n·p` and standard deviation `sqrt(n·p·(1-p))`.

/// Fraction of `sent` that was not received, in `[0, 1]` (0 when nothing
/// was sent; `received > sent` counts as no loss).
pub fn receiver_loss(sent: u64, received: u64) -> f64 {
    if sent == 0 {
        return 0.0;
    }
    sent.saturating_sub(received) as f64 / sent as f64
}

fn check_p(p: f64) {
    assert!(
        (0.0..=1.0).contains(&p),
        "p must be a probability in [0, 1] (got {p}; 30% is 0.3)"
    );
}

/// The band `n·p ± k·sqrt(n·p·(1-p))` of the number of losses out of `n`
/// with loss probability `p`, clamped to `[0, n]`.
///
/// # Panics
/// If `p` is not in `[0, 1]` or `k` is negative.
pub fn sigma_band(n: u64, p: f64, k: f64) -> (f64, f64) {
    check_p(p);
    assert!(k >= 0.0, "k must not be negative");
    let n = n as f64;
    let mean = n * p;
    let sd = (n * p * (1.0 - p)).sqrt();
    ((mean - k * sd).max(0.0), (mean + k * sd).min(n))
}

/// [`sigma_band`] with k = 3 (holds with about 99.7 % probability).
pub fn three_sigma_band(n: u64, p: f64) -> (f64, f64) {
    sigma_band(n, p, 3.0)
}

/// True when `observed_losses` out of `n` lies inside the `k`-sigma band.
pub fn within_k_sigma(n: u64, p: f64, k: f64, observed_losses: u64) -> bool {
    let (lo, hi) = sigma_band(n, p, k);
    let o = observed_losses as f64;
    o >= lo && o <= hi
}

/// True when `observed_losses` out of `n` lies inside the 3-sigma band of
/// Binomial(n, p). With `p` 0 or 1 the band is a single point.
pub fn within_3_sigma(n: u64, p: f64, observed_losses: u64) -> bool {
    within_k_sigma(n, p, 3.0, observed_losses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_fraction() {
        assert_eq!(receiver_loss(0, 0), 0.0);
        assert_eq!(receiver_loss(100, 100), 0.0);
        assert_eq!(receiver_loss(100, 70), 0.3);
        assert_eq!(receiver_loss(100, 0), 1.0);
        assert_eq!(receiver_loss(100, 120), 0.0);
    }

    #[test]
    fn band_values() {
        // n=10000, p=0.3: mean 3000, sd sqrt(2100)=45.83, 3 sd = 137.5
        let (lo, hi) = three_sigma_band(10_000, 0.3);
        assert!((lo - 2862.52).abs() < 0.01, "{lo}");
        assert!((hi - 3137.48).abs() < 0.01, "{hi}");
        assert!(within_3_sigma(10_000, 0.3, 3000));
        assert!(within_3_sigma(10_000, 0.3, 2863));
        assert!(within_3_sigma(10_000, 0.3, 3137));
        assert!(!within_3_sigma(10_000, 0.3, 2862));
        assert!(!within_3_sigma(10_000, 0.3, 3138));
        assert!(!within_3_sigma(10_000, 0.3, 0));
    }

    #[test]
    fn degenerate_probabilities() {
        assert_eq!(three_sigma_band(1000, 0.0), (0.0, 0.0));
        assert!(within_3_sigma(1000, 0.0, 0));
        assert!(!within_3_sigma(1000, 0.0, 1));
        assert_eq!(three_sigma_band(1000, 1.0), (1000.0, 1000.0));
        assert!(within_3_sigma(1000, 1.0, 1000));
        assert!(!within_3_sigma(1000, 1.0, 999));
        assert_eq!(three_sigma_band(0, 0.5), (0.0, 0.0));
    }

    #[test]
    fn band_is_clamped() {
        // n=10, p=0.05: mean 0.5, 3 sd = 2.07 -> lower bound clamps to 0.
        let (lo, hi) = three_sigma_band(10, 0.05);
        assert_eq!(lo, 0.0);
        assert!(hi > 2.5 && hi < 2.6);
        let (lo, hi) = three_sigma_band(10, 0.95);
        assert!(lo > 7.4 && lo < 7.5);
        assert_eq!(hi, 10.0);
    }

    #[test]
    fn k_sigma_widens() {
        let (l1, h1) = sigma_band(1000, 0.5, 1.0);
        let (l3, h3) = sigma_band(1000, 0.5, 3.0);
        assert!(l3 < l1 && h3 > h1);
        assert!(within_k_sigma(1000, 0.5, 0.0, 500));
        assert!(!within_k_sigma(1000, 0.5, 0.0, 501));
    }

    #[test]
    #[should_panic(expected = "probability")]
    fn percent_instead_of_fraction_panics() {
        within_3_sigma(100, 30.0, 30);
    }
}
