//! Heap counting for the fuzz tests' allocation limits: a `#[global_allocator]` that records,
//! while a measurement runs, the largest single allocation and the most bytes live at once (a
//! growing buffer counts old and new while it moves). The workspace forbids `unsafe`, so the
//! counting allocator comes from `tracking-allocator`; this file only adds up what it reports.
//! The other crates' fuzz tests include this file by path (each test binary has its own allocator).
//! It also holds their shared property-test configuration.

#![allow(dead_code)]
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, Once};

use tracking_allocator::{AllocationGroupId, AllocationRegistry, AllocationTracker};

#[global_allocator]
static ALLOCATOR: tracking_allocator::Allocator<std::alloc::System> =
    tracking_allocator::Allocator::system();

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

struct Counter;

impl AllocationTracker for Counter {
    fn allocated(&self, _: usize, size: usize, _: usize, _: AllocationGroupId) {
        let live = LIVE.fetch_add(size, SeqCst) + size;
        PEAK.fetch_max(live, SeqCst);
        LARGEST.fetch_max(size, SeqCst);
    }

    fn deallocated(
        &self,
        _: usize,
        size: usize,
        _: usize,
        _: AllocationGroupId,
        _: AllocationGroupId,
    ) {
        LIVE.fetch_sub(size, SeqCst);
    }
}

/// The tests of a binary run one at a time, so a measurement counts only its own work.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the binary's tests apart; every test takes it.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What `f` allocated.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// The largest single allocation.
    pub largest: usize,
    /// The most bytes it held live at once.
    pub peak: usize,
}

/// Runs `f` (the caller holds [`serial`]) and reports its allocations.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Usage) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = AllocationRegistry::set_global_tracker(Counter);
    });
    let base = LIVE.load(SeqCst);
    PEAK.store(base, SeqCst);
    LARGEST.store(0, SeqCst);
    AllocationRegistry::enable_tracking();
    let r = f();
    AllocationRegistry::disable_tracking();
    let usage = Usage {
        largest: LARGEST.load(SeqCst),
        peak: PEAK.load(SeqCst).saturating_sub(base),
    };
    (r, usage)
}

/// `cases` per property, or `PROPTEST_CASES` when set (for a longer run by hand).
pub fn config(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
