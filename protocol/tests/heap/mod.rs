//! Heap counting for the fuzz tests' allocation limits: a `#[global_allocator]` that records,
//! while a measurement runs, the largest single allocation and the most bytes live at once (a
//! growing buffer counts old and new while it moves). The workspace forbids `unsafe`, so the
//! counting allocator comes from `tracking-allocator`; this file only adds up what it reports.
//! The other crates' fuzz tests include this file by path (each test binary has its own allocator).
//! It also holds their shared property-test configuration.

#![allow(dead_code)]
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, Once};

use tracking_allocator::{
    AllocationGroupId, AllocationGroupToken, AllocationRegistry, AllocationTracker,
};

#[global_allocator]
static ALLOCATOR: tracking_allocator::Allocator<std::alloc::System> =
    tracking_allocator::Allocator::system();

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// The allocation group being measured (its id as a number; 0 for none).
static MEASURED: AtomicUsize = AtomicUsize::new(0);

struct Counter;

impl AllocationTracker for Counter {
    fn allocated(&self, _: usize, size: usize, _: usize, group: AllocationGroupId) {
        // Only the measuring thread's allocations: the test harness prints other tests'
        // results from its own threads meanwhile, and its few KiB once broke a limit.
        if group.as_usize().get() != MEASURED.load(SeqCst) {
            return;
        }
        let live = LIVE.fetch_add(size, SeqCst) + size;
        PEAK.fetch_max(live, SeqCst);
        LARGEST.fetch_max(size, SeqCst);
    }

    fn deallocated(
        &self,
        _: usize,
        size: usize,
        _: usize,
        source: AllocationGroupId,
        _: AllocationGroupId,
    ) {
        if source.as_usize().get() != MEASURED.load(SeqCst) {
            return;
        }
        // Saturating: memory allocated in the group before a measurement may be freed in it.
        let _ = LIVE.fetch_update(SeqCst, SeqCst, |l| Some(l.saturating_sub(size)));
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

/// Runs `f` (the caller holds [`serial`]) and reports what it allocated on this thread (the
/// decoders and line readers measured here run on the caller's thread; threads they spawn are
/// not counted).
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Usage) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = AllocationRegistry::set_global_tracker(Counter);
    });
    let mut token = AllocationGroupToken::register().expect("an allocation group");
    MEASURED.store(token.id().as_usize().get(), SeqCst);
    LIVE.store(0, SeqCst);
    let base = 0;
    PEAK.store(base, SeqCst);
    LARGEST.store(0, SeqCst);
    AllocationRegistry::enable_tracking();
    let guard = token.enter();
    let r = f();
    drop(guard);
    AllocationRegistry::disable_tracking();
    MEASURED.store(0, SeqCst);
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
