//! A value a reload replaces while readers keep going: [`Live`].
//!
//! Readers never wait: [`Live::load`] is an `ArcSwap` load. A reader that keeps a copy per
//! thread (the proxy's workers do, in an `Rc`) asks [`Live::generation`], one atomic read of a
//! line nobody writes between reloads, and reloads its copy only when the number moved. A
//! request keeps the value it started with to its end, so in-flight requests finish on the
//! config they began on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The current value, and how many times it was replaced.
pub struct Live<T> {
    current: ArcSwap<T>,
    generation: AtomicU64,
}

impl<T> Live<T> {
    pub fn new(value: Arc<T>) -> Live<T> {
        Live {
            current: ArcSwap::new(value),
            generation: AtomicU64::new(0),
        }
    }

    /// The value now.
    pub fn load(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Moves on every [`Live::replace`]; a reader whose copy was taken at this generation has
    /// the current value.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Put `value` in place; returns the value it replaces. The value is stored before the
    /// generation moves, so a reader that sees the new generation loads the new value.
    pub fn replace(&self, value: Arc<T>) -> Arc<T> {
        let old = self.current.swap(value);
        self.generation.fetch_add(1, Ordering::AcqRel);
        old
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_moves_the_generation_and_keeps_old_readers_whole() {
        let live = Live::new(Arc::new(1));
        let (g, held) = (live.generation(), live.load());
        let old = live.replace(Arc::new(2));
        assert_eq!((*old, *held), (1, 1), "a reader keeps what it loaded");
        assert_ne!(live.generation(), g);
        assert_eq!(*live.load(), 2);
    }
}
