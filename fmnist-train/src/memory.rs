//! The allocator policy of the workspace's binaries: mimalloc, keeping the memory it frees.
//!
//! candle allocates a fresh buffer for every tensor operation, so a training step of a
//! convolutional net frees and re-allocates tens of megabytes. With mimalloc's default policy
//! the freed pages go back to the OS after a short delay and the next step faults them in
//! again, each one zeroed by the kernel: in `perf`, 12% of a `resnet` training step at batch
//! 128 went to the kernel's page clearing. Keeping them costs nothing but an RSS that stays at
//! its peak, which is what a training or serving process reaches anyway.

use libmimalloc_sys::{mi_option_get, mi_option_set, mi_option_t};

/// mimalloc.h's `mi_option_purge_delay` (milliseconds before freed memory is returned to the
/// OS; -1: never). libmimalloc-sys names no constant for it.
const MI_OPTION_PURGE_DELAY: mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the OS. Call it first thing in `main` of a
/// binary whose global allocator is `mimalloc::MiMalloc`.
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table; it is safe to
    // call at any time, from any thread.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// mimalloc's purge delay now, in milliseconds (-1: freed memory is never returned).
#[allow(unsafe_code)]
pub fn purge_delay_ms() -> i64 {
    // SAFETY: mi_option_get only reads mimalloc's option table.
    unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) as i64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // mimalloc's default purge delay is 1000 ms in v3 (10 in v2); an option index that
        // pointed elsewhere would read some other default (0, 1, 2, 10, 100, ...).
        let default = purge_delay_ms();
        assert!(
            default == 1000 || default == 10,
            "purge delay read {default}"
        );
        keep_freed_memory();
        assert_eq!(purge_delay_ms(), -1);
    }
}
