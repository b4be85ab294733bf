//! The few distributions the simulator needs, on a seeded generator (no `rand_distr`).

use rand::Rng;

pub fn standard_normal(rng: &mut impl Rng) -> f64 {
    // Box–Muller; `1 - u` keeps the logarithm finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Poisson counts: exact (Knuth) for small means, normal approximation for large ones where
/// Knuth's product underflows and the difference no longer matters.
pub fn poisson(rng: &mut impl Rng, mean: f64) -> u32 {
    if mean <= 0.0 {
        return 0;
    }
    if mean > 50.0 {
        let x = mean + mean.sqrt() * standard_normal(rng);
        return x.round().max(0.0) as u32;
    }
    let limit = (-mean).exp();
    let mut product: f64 = rng.random();
    let mut count = 0;
    while product > limit {
        product *= rng.random::<f64>();
        count += 1;
    }
    count
}

/// Log-normal with the given mean and coefficient of variation: service times are positive
/// and right-skewed, and a CV of 1 matches the exponential's spread.
pub fn lognormal(rng: &mut impl Rng, mean: f64, cv: f64) -> f64 {
    if cv <= 0.0 {
        return mean;
    }
    let sigma2 = (1.0 + cv * cv).ln();
    let mu = mean.ln() - sigma2 / 2.0;
    (mu + sigma2.sqrt() * standard_normal(rng)).exp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn mean_and_cv(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn lognormal_has_the_requested_mean_and_spread() {
        let mut rng = StdRng::seed_from_u64(9);
        let xs: Vec<f64> = (0..200_000)
            .map(|_| lognormal(&mut rng, 2.0, 1.0))
            .collect();
        let (mean, cv) = mean_and_cv(&xs);
        assert!((mean - 2.0).abs() < 0.05, "{mean}");
        assert!((cv - 1.0).abs() < 0.08, "{cv}");
        assert!(xs.iter().all(|x| *x > 0.0));
    }

    #[test]
    fn poisson_means_match_for_small_and_large_rates() {
        let mut rng = StdRng::seed_from_u64(3);
        for rate in [0.02, 3.0, 400.0] {
            let xs: Vec<f64> = (0..50_000)
                .map(|_| f64::from(poisson(&mut rng, rate)))
                .collect();
            let (mean, _) = mean_and_cv(&xs);
            assert!((mean - rate).abs() < rate * 0.05 + 0.01, "{rate}: {mean}");
        }
    }
}
