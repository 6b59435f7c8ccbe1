//! The heap as the allocator sees it, as two gauges on `/metrics`: bytes live
//! allocations hold (`pullwatch_heap_allocated_bytes`) and bytes of resident pages the
//! allocator maps (`pullwatch_heap_resident_bytes`: live allocations, size-class
//! rounding, the allocator's metadata, freed pages not yet given back). Resident is
//! jemalloc's upper bound: a page of an allocation never written counts though the
//! kernel never backed it, so with large, mostly unwritten buffers (an HTTP/2
//! connection's 16 KiB write buffer, of which small messages touch one page) it can
//! exceed the process's RSS. Allocated against RSS says how much of what is allocated
//! is ever touched.
//!
//! Read from jemalloc's counters (refreshed on each scrape), so only served when the
//! aggregator's binary runs on jemalloc (its main.rs says so with
//! [`allocator_is_jemalloc`]); a test binary on the system allocator has none.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, Registry};

/// Set once the binary's global allocator is jemalloc.
static JEMALLOC: AtomicBool = AtomicBool::new(false);

/// Says the process allocates through jemalloc: its counters are then the heap's.
pub fn allocator_is_jemalloc() {
    JEMALLOC.store(true, Ordering::Relaxed);
}

/// The two gauges, read from jemalloc at each collection.
struct HeapGauges {
    allocated: IntGauge,
    resident: IntGauge,
}

impl HeapGauges {
    fn new() -> Result<Self, prometheus::Error> {
        Ok(HeapGauges {
            allocated: IntGauge::new(
                "pullwatch_heap_allocated_bytes",
                "Bytes held by the aggregator's live heap allocations (jemalloc stats.allocated).",
            )?,
            resident: IntGauge::new(
                "pullwatch_heap_resident_bytes",
                "Bytes of resident pages the heap allocator maps: live allocations, their size-class rounding, allocator metadata and freed pages not yet returned (jemalloc stats.resident).",
            )?,
        })
    }
}

impl Collector for HeapGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.allocated
            .desc()
            .into_iter()
            .chain(self.resident.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        match read() {
            Some((allocated, resident)) => {
                self.allocated.set(allocated);
                self.resident.set(resident);
                self.allocated
                    .collect()
                    .into_iter()
                    .chain(self.resident.collect())
                    .collect()
            }
            // jemalloc refused a read (it cannot once started): no stale figure.
            None => Vec::new(),
        }
    }
}

/// `(allocated, resident)` bytes, after refreshing jemalloc's cached counters.
#[cfg(not(target_env = "msvc"))]
fn read() -> Option<(i64, i64)> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    let allocated = stats::allocated::read().ok()?;
    let resident = stats::resident::read().ok()?;
    Some((
        i64::try_from(allocated).unwrap_or(i64::MAX),
        i64::try_from(resident).unwrap_or(i64::MAX),
    ))
}

#[cfg(target_env = "msvc")]
fn read() -> Option<(i64, i64)> {
    None
}

/// Registers the heap gauges in `registry` when the process runs on jemalloc.
pub(crate) fn register(registry: &Registry) -> Result<(), prometheus::Error> {
    if JEMALLOC.load(Ordering::Relaxed) {
        registry.register(Box::new(HeapGauges::new()?))?;
    }
    Ok(())
}
