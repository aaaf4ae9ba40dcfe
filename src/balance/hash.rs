//! A fixed, documented hash, so every replica (and every build) ranks endpoints the same
//! way: FNV-1a over the bytes, then MurmurHash3's 64-bit finalizer to spread the bits.
//! `std`'s `DefaultHasher` is not an option: its algorithm may change between releases.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    fmix64(h)
}

/// MurmurHash3's finalizer: a bijection with full avalanche.
fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// Rendezvous (highest random weight) score of one endpoint for one key: the key goes to
/// the endpoint with the highest score, so removing an endpoint moves only its own keys.
pub fn rendezvous_score(key: u64, endpoint: u64) -> u64 {
    fmix64(key ^ fmix64(endpoint.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash is pinned: a change would move every ConsistentHash key on upgrade, and
    /// replicas of different versions would disagree.
    #[test]
    fn stable_hash_values_are_fixed() {
        assert_eq!(stable_hash(b"10.0.0.1:8080"), 0xe8c7_2115_6ed5_2b14);
        assert_eq!(stable_hash(b"user-42"), 0xa395_32c7_ab05_1e8d);
    }
}
