//! Sizing of the set-associative tables (the embryo table, the prefix table): a
//! slot's set is the low bits of a hash, so the number of sets is a power of two.

/// The number of sets of `ways` slots for a requested number of slots: a power of
/// two, at least one, rounded down so that a table never takes more memory than
/// asked for (but one set).
pub const fn sets_for(slots: u32, ways: u32) -> u32 {
    let sets = slots / ways;
    if sets <= 1 {
        1
    } else if sets.is_power_of_two() {
        sets
    } else {
        1 << (31 - sets.leading_zeros())
    }
}

#[cfg(test)]
mod tests {
    use super::sets_for;

    #[test]
    fn sets_are_a_power_of_two_never_over_the_request() {
        assert_eq!(sets_for(0, 8), 1);
        assert_eq!(sets_for(15, 8), 1);
        assert_eq!(sets_for(16, 8), 2);
        assert_eq!(sets_for(8192, 8), 1024);
        assert_eq!(sets_for(8191, 8), 512);
        assert_eq!(sets_for(u32::MAX, 8), 1 << 28);
    }
}
