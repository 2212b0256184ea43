//! Test-only plugin built with the SDK that works its heap hard, to check
//! the SDK's arena allocator inside Wasm: `route` allocates `churn_mib` MiB
//! in short-lived blocks of every size (far more than the memory cap, so it
//! only passes if freed memory is reused), keeps `hold_kib` KiB alive across
//! the arena's end, and checks every block still holds what was written.
//! It rejects with what went wrong, or routes as requested.

use tollgate_plugin_sdk::prelude::*;

/// How hard to work the heap.
#[derive(serde::Deserialize)]
pub struct Config {
    churn_mib: usize,
    hold_kib: usize,
}

/// The plugin.
pub struct Allocator;

fn fill(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31) ^ i) as u8)
        .collect()
}

fn intact(seed: usize, block: &[u8]) -> bool {
    block
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (seed.wrapping_mul(31) ^ i) as u8)
}

fn work(config: &Config) -> Result<(), String> {
    // Long-lived blocks of growing sizes, interleaved with the churn so they
    // sit both inside the arena and past it.
    let mut held: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut held_bytes = 0;
    let mut churned = 0;
    let mut seed = 0usize;
    while churned < config.churn_mib << 20 || held_bytes < config.hold_kib << 10 {
        seed += 1;
        let len = 1 + (seed * 7919) % 4096;
        if held_bytes < config.hold_kib << 10 {
            held.push((seed, fill(seed, len)));
            held_bytes += len;
        }
        // Short-lived: grown in steps (reallocations), then dropped.
        let mut scratch = Vec::new();
        for step in 0..4 {
            scratch.extend_from_slice(&fill(seed + step, len));
        }
        if !intact(seed, &scratch[..len]) {
            return Err(format!("scratch block {seed} corrupted"));
        }
        churned += scratch.capacity() + 4 * len;
    }
    match held.iter().find(|(seed, block)| !intact(*seed, block)) {
        Some((seed, _)) => Err(format!("held block {seed} corrupted")),
        None => Ok(()),
    }
}

impl Plugin for Allocator {
    type Config = Config;
    const DESCRIPTION: &'static str = "Test plugin: allocator stress";

    fn route(
        config: &Config,
        request: &RequestSummary,
        offers: &[ModelOffer],
    ) -> Result<RouteDecision, Rejection> {
        work(config).map_err(|message| Rejection {
            kind: RejectionKind::InvalidRequest,
            message,
        })?;
        route_as_requested(request, offers)
    }
}

tollgate_plugin_sdk::export_plugin!(Allocator);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_checks_out_natively() {
        assert_eq!(
            work(&Config {
                churn_mib: 4,
                hold_kib: 256
            }),
            Ok(())
        );
    }
}
