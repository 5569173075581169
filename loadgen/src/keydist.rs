//! Key choice, as the YCSB core workloads define it (Cooper et al., SoCC 2010, and the YCSB
//! source): uniform; zipfian with theta 0.99 by the Gray et al. method, scrambled by an FNV-1a
//! hash so that popular keys are spread over the key space; and "latest", a zipfian over recency
//! so that the newest inserts are the most popular.

use rand::Rng;

/// The YCSB zipfian constant.
pub const ZIPFIAN_THETA: f64 = 0.99;

/// Zipfian over `0..items` (0 most popular), extendable as items are inserted.
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    zeta_items: f64,
    zeta_two: f64,
    alpha: f64,
    eta: f64,
}

fn zeta(from: u64, to: u64, theta: f64, start: f64) -> f64 {
    (from..to).fold(start, |sum, i| sum + 1.0 / ((i + 1) as f64).powf(theta))
}

impl Zipfian {
    pub fn new(items: u64, theta: f64) -> Zipfian {
        assert!(items >= 1);
        let zeta_items = zeta(0, items, theta, 0.0);
        let zeta_two = zeta(0, 2, theta, 0.0);
        let mut zipfian = Zipfian {
            items,
            theta,
            zeta_items,
            zeta_two,
            alpha: 1.0 / (1.0 - theta),
            eta: 0.0,
        };
        zipfian.eta = zipfian.compute_eta();
        zipfian
    }

    fn compute_eta(&self) -> f64 {
        (1.0 - (2.0 / self.items as f64).powf(1.0 - self.theta))
            / (1.0 - self.zeta_two / self.zeta_items)
    }

    /// Extends the range to `0..items` (incremental, as YCSB does for inserts).
    pub fn grow(&mut self, items: u64) {
        if items > self.items {
            self.zeta_items = zeta(self.items, items, self.theta, self.zeta_items);
            self.items = items;
            self.eta = self.compute_eta();
        }
    }

    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.gen();
        let uz = u * self.zeta_items;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.items - 1);
        }
        let value = self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha);
        (value as u64).min(self.items - 1)
    }
}

/// FNV-1a over the 8 bytes of `value`, as YCSB's scrambled zipfian uses.
pub fn fnv1a64(value: u64) -> u64 {
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for byte in value.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Uniform,
    Zipfian,
    Latest,
}

/// Picks key ids for one worker.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    Uniform,
    /// Scrambled zipfian over the loaded keys.
    Zipfian(Zipfian),
    /// Zipfian over recency: the newest key is the most popular.
    Latest(Zipfian),
}

impl KeyChooser {
    pub fn new(distribution: Distribution, keys: u64) -> KeyChooser {
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform,
            Distribution::Zipfian => KeyChooser::Zipfian(Zipfian::new(keys, ZIPFIAN_THETA)),
            Distribution::Latest => KeyChooser::Latest(Zipfian::new(keys, ZIPFIAN_THETA)),
        }
    }

    /// A key id below `key_count` (the keys that exist now).
    pub fn choose(&mut self, rng: &mut impl Rng, key_count: u64) -> u64 {
        let key_count = key_count.max(1);
        match self {
            KeyChooser::Uniform => rng.gen_range(0..key_count),
            KeyChooser::Zipfian(zipfian) => fnv1a64(zipfian.sample(rng)) % key_count,
            KeyChooser::Latest(zipfian) => {
                zipfian.grow(key_count);
                key_count - 1 - zipfian.sample(rng).min(key_count - 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn zipfian_is_skewed_like_ycsb() {
        let zipfian = Zipfian::new(1000, ZIPFIAN_THETA);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[zipfian.sample(&mut rng) as usize] += 1;
        }
        // With theta 0.99 over 1000 items, item 0 takes about 1/zeta(1000) = 13 % of draws.
        let share = f64::from(counts[0]) / 100_000.0;
        assert!((0.11..0.16).contains(&share), "{share}");
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[500]);
    }

    #[test]
    fn latest_prefers_new_keys_and_grows() {
        let mut chooser = KeyChooser::new(Distribution::Latest, 100);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(2);
        let newest = (0..10_000)
            .filter(|_| chooser.choose(&mut rng, 200) >= 190)
            .count();
        assert!(newest > 3_000, "{newest}");
        assert!((0..1000).all(|_| chooser.choose(&mut rng, 200) < 200));
    }

    #[test]
    fn scrambled_zipfian_spreads_hot_keys() {
        let mut chooser = KeyChooser::new(Distribution::Zipfian, 10_000);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        let hottest = (0..1000)
            .map(|_| chooser.choose(&mut rng, 10_000))
            .filter(|&k| k < 10)
            .count();
        assert!(
            hottest < 100,
            "hot keys are not all at the start: {hottest}"
        );
    }
}
