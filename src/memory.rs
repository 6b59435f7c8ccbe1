//! How glibc's allocator holds memory: its heap arenas capped at start (a no-op
//! elsewhere than glibc). The agent allocates through glibc; the aggregator through
//! jemalloc (its main.rs), for which the cap only concerns what C code allocates.

/// Heap arenas glibc may create, unless `MALLOC_ARENA_MAX` (or `GLIBC_TUNABLES`) says
/// otherwise.
const MALLOC_ARENAS: i32 = 1;

/// Caps glibc's heap arenas at [`MALLOC_ARENAS`]. By default each thread that finds
/// the heap locked gets an arena of its own (up to 8 per core), and each keeps what it
/// freed: after 30 s of pod churn at 20k workloads (`cluster_scale`) RSS was 72 MiB
/// with the default, 66 with two arenas, 62 with one, at the same CPU. One suffices
/// for processes that allocate little in parallel: glibc's per-thread cache serves
/// most small allocations without the arena's lock. Runs before the runtime starts
/// its threads.
pub(crate) fn limit_malloc_arenas() {
    let set_by_user = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.arena_max"));
    if set_by_user {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}
