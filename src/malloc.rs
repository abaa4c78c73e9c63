//! The C allocator's settings for the edge binaries.
//!
//! glibc gives a thread that finds the allocator busy an arena of its own, up to eight per
//! core, and memory freed in one arena serves only that arena. edgecore's threads take
//! turns building the catalog, parsing the store's first list and serving the socket, so
//! each transient peak left its own free space behind: on a 2-core box an idle edgecore
//! with 1,000 Services held 5.2–6.8 MiB of anonymous memory with the default and 4.4–4.7
//! MiB with one arena (`bench/footprint.sh`). The data path did not slow down: in
//! `bench/proxy.sh 5 3`, two runs each way, edgemesh's HTTP path against HAProxy was 1.08×
//! and 1.08× with one arena, 1.02× and 1.06× with the default (p99 below HAProxy's in 6 of 6
//! rounds, against 2 of 6); bulk TCP within the runs' noise (1.10–1.15× HAProxy, 1.09–1.34×).

/// Arenas the edge binaries use unless the operator chose a number.
pub const EDGE_ARENAS: i32 = 1;

/// Limits glibc to `arenas` arenas; call before any thread starts. The operator's
/// environment wins: with `MALLOC_ARENA_MAX` set, or `glibc.malloc.arena_max` in
/// `GLIBC_TUNABLES`, nothing changes.
pub fn limit_arenas(arenas: i32) {
    let tuned = std::env::var_os("GLIBC_TUNABLES")
        .is_some_and(|t| t.to_string_lossy().contains("glibc.malloc.arena_max"));
    if tuned || std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    set_arena_max(arenas);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_arena_max(arenas: i32) {
    // SAFETY: mallopt takes two integers and changes only the allocator's own parameters;
    // it is thread-safe, and called here before this process has started other threads.
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    if ok != 1 {
        eprintln!("warning: cannot limit the allocator to {arenas} arena(s)");
    }
}

/// Other C libraries (musl) have no per-thread arenas to limit.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: i32) {}
