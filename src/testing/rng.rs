//! The tests' seedable generators, so that a printed seed replays a run: [`XorShift`] (fault
//! schedules in [`FaultControl::seeded`](super::FaultControl::seeded), the corruption campaign's
//! flips, the crash soak's kill points) and [`XorShift64`] (the crash tests' kill points, and the
//! deterministic text of the scenarios and tests).

/// xorshift64*: small, seedable, and the same on every platform.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator seeded with `seed` mixed with a constant, so that every seed (0 too) gives a
    /// usable, non-zero state.
    pub fn new(seed: u64) -> Self {
        XorShift((seed ^ 0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// A generator whose state is `state` as given (the seeds `tests/campaign.rs` and
    /// `tests/soak.rs` print are states). A zero state gives only zeros.
    pub fn from_state(state: u64) -> Self {
        XorShift(state)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The next number below `n` (below 1 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Plain xorshift64 (shifts 13, 7, 17): the generator the crash tests' kill points and the
/// deterministic texts were written with, kept so that their seeds and texts stay the same.
#[derive(Debug, Clone)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// A generator whose state is `state` as given. A zero state gives only zeros.
    pub fn from_state(state: u64) -> Self {
        XorShift64(state)
    }

    /// The next number (the new state).
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::{XorShift, XorShift64};

    /// The sequences are part of the tests' replayability: a seed printed by an earlier run must
    /// give the same numbers (these are the first three of the campaign's default seed).
    #[test]
    fn sequences_are_stable() {
        let mut raw = XorShift::from_state(0x5eed_c0de);
        let raw: Vec<u64> = (0..3).map(|_| raw.next_u64()).collect();
        assert_eq!(
            raw,
            [
                0x5768_180a_c981_8585,
                0xc749_84d9_db2b_e708,
                0x7847_b106_e896_d66e
            ]
        );
        let mut mixed = XorShift::new(0x5eed_c0de);
        let mixed: Vec<u64> = (0..3).map(|_| mixed.next_u64()).collect();
        assert_eq!(
            mixed,
            [
                0xc14a_d7b6_7701_53ff,
                0xb085_fc05_6386_e46f,
                0xb921_42d7_4b2d_2566
            ]
        );
        assert_eq!(XorShift::from_state(0).below(10), 0);
        let mut plain = XorShift64::from_state(1);
        let plain: Vec<u64> = (0..3).map(|_| plain.next_u64()).collect();
        assert_eq!(
            plain,
            [0x4082_2041, 0x1000_4106_0c01_1441, 0x9b1e_842f_6e86_2629]
        );
    }
}
