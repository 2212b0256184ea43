//! The plugin's heap: a bump arena in front of the standard allocator.
//!
//! The gateway gives every request a fresh instance and throws it away after
//! `price`, so almost nothing a plugin allocates outlives the request. A
//! general-purpose allocator still pays for bookkeeping on every call: with
//! `dlmalloc` (the `wasm32-wasip2` default) allocation and freeing were about
//! a sixth of the whole plugin path, more than the plugin's own logic
//! (`cargo bench -p tollgate --bench plugin_path`, BENCHMARKS.md).
//!
//! Here an allocation takes the next free bytes of a fixed arena; freeing the
//! most recent allocation gives its bytes back and growing it extends it in
//! place, other frees are no-ops. Once the arena is full, allocations go to
//! the standard allocator, which frees and reuses as usual, so a plugin that
//! churns through memory stays within the same memory cap as before; at most
//! [`ARENA_BYTES`] are left unreclaimed.
//!
//! Only compiled for Wasm: natively (the plugin's own `cargo test`) the
//! process keeps its usual allocator. Plugins that bring their own
//! `#[global_allocator]` turn off the SDK's default `arena` feature.

#![cfg_attr(
    not(all(target_arch = "wasm32", feature = "arena")),
    allow(
        dead_code,
        reason = "the arena is the global allocator only in Wasm builds"
    )
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, UnsafeCell};

/// Size of the arena. It lives in the module's zero-initialised data, so it
/// costs nothing until touched; the host keeps the pages a request wrote
/// resident for the next one.
pub const ARENA_BYTES: usize = 64 << 10;

#[repr(C, align(16))]
struct Bytes(UnsafeCell<[u8; ARENA_BYTES]>);

/// The bump allocator; see the module docs.
pub struct Arena {
    bytes: Bytes,
    /// Offset of the first free byte.
    top: Cell<usize>,
}

// SAFETY: `wasm32-wasip2` plugins are single-threaded; the gateway never
// enters one instance from two threads. `Sync` is required of a global
// allocator, and nothing here is reachable from another thread.
#[allow(unsafe_code, reason = "a global allocator must be Sync")]
unsafe impl Sync for Arena {}

impl Arena {
    /// An empty arena.
    pub const fn new() -> Self {
        Arena {
            bytes: Bytes(UnsafeCell::new([0; ARENA_BYTES])),
            top: Cell::new(0),
        }
    }

    fn base(&self) -> *mut u8 {
        self.bytes.0.get().cast()
    }

    /// The offset of `ptr` in the arena, if it was handed out by it.
    fn offset_of(&self, ptr: *mut u8) -> Option<usize> {
        let offset = (ptr as usize).checked_sub(self.base() as usize)?;
        (offset < ARENA_BYTES).then_some(offset)
    }

    /// Bump-allocates, or returns `None` when the arena has no room.
    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        let base = self.base() as usize;
        // `align` is a power of two: round up with a mask, not a division
        // (a remainder is a slow instruction in Wasm and this runs on every
        // allocation).
        let mask = layout.align() - 1;
        let start = ((base + self.top.get()).checked_add(mask)? & !mask) - base;
        let end = start.checked_add(layout.size())?;
        if end > ARENA_BYTES {
            return None;
        }
        self.top.set(end);
        // `start` is within the arena, so this stays in bounds.
        Some(self.base().wrapping_add(start))
    }
}

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

#[allow(
    unsafe_code,
    reason = "GlobalAlloc is an unsafe trait; its contract is upheld below"
)]
// SAFETY: every pointer handed out is either a disjoint, suitably aligned
// range of the arena (bump allocation never hands out a byte twice while it
// is live: only the most recent allocation is ever given back) or comes from
// `System`, and each `dealloc`/`realloc` routes a pointer back to whichever
// allocator produced it.
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(ptr) => ptr,
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(ptr) => {
                // SAFETY: `ptr` is valid for `layout.size()` bytes. Freed bytes
                // can be handed out again, so they are not known to be zero.
                unsafe { ptr.write_bytes(0, layout.size()) };
                ptr
            }
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match self.offset_of(ptr) {
            // Only the most recent allocation can be given back.
            Some(offset) if offset + layout.size() == self.top.get() => self.top.set(offset),
            Some(_) => {}
            // SAFETY: `ptr` came from `System` with this layout.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if let Some(offset) = self.offset_of(ptr) {
            // The most recent allocation grows or shrinks in place.
            if offset + layout.size() == self.top.get()
                && let Some(end) = offset.checked_add(new_size)
                && end <= ARENA_BYTES
            {
                self.top.set(end);
                return ptr;
            }
            // SAFETY: the caller guarantees `new_size` with `layout.align()`
            // is a valid layout.
            let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            // SAFETY: as for `alloc`.
            let new = unsafe { self.alloc(new_layout) };
            if !new.is_null() {
                // SAFETY: both ranges are valid for the smaller size and
                // distinct (the old block is not the most recent one, or the
                // arena had no room to grow it in place).
                unsafe { new.copy_from_nonoverlapping(ptr, layout.size().min(new_size)) };
                // SAFETY: `ptr` came from this allocator with `layout`.
                unsafe { self.dealloc(ptr, layout) };
            }
            return new;
        }
        // SAFETY: `ptr` came from `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unsafe_code, reason = "exercises the GlobalAlloc contract directly")]
    #[test]
    fn bumps_gives_back_the_latest_grows_in_place_and_falls_back_when_full() {
        let arena = Box::new(Arena::new());
        let l8 = Layout::from_size_align(8, 8).unwrap();
        unsafe {
            let a = arena.alloc(l8);
            let b = arena.alloc(l8);
            assert_eq!(b as usize - a as usize, 8);
            // Freeing the latest gives its bytes back; an older one does not.
            arena.dealloc(b, l8);
            assert_eq!(arena.top.get(), 8);
            assert_eq!(arena.alloc(l8), b);
            arena.dealloc(a, l8);
            assert_eq!(arena.top.get(), 16);
            // The latest grows in place and keeps its contents.
            b.write(7);
            let grown = arena.realloc(b, l8, 64);
            assert_eq!(grown, b);
            assert_eq!(grown.read(), 7);
            assert_eq!(arena.top.get(), 72);
            // Alignment is honoured.
            let l64 = Layout::from_size_align(1, 64).unwrap();
            let c = arena.alloc(l64);
            assert_eq!(c as usize % 64, 0);
            // An older block that grows moves, contents intact.
            let d = arena.alloc(l8);
            let _e = arena.alloc(l8);
            d.write(9);
            let moved = arena.realloc(d, l8, 32);
            assert_ne!(moved, d);
            assert_eq!(moved.read(), 9);
            assert!(arena.offset_of(moved).is_some());
            // Past the arena, memory comes from the system allocator and goes
            // back to it.
            let big = Layout::from_size_align(ARENA_BYTES, 8).unwrap();
            let outside = arena.alloc(big);
            assert!(!outside.is_null());
            assert!(arena.offset_of(outside).is_none());
            outside.write(1);
            let grown_outside = arena.realloc(outside, big, ARENA_BYTES * 2);
            assert_eq!(grown_outside.read(), 1);
            arena.dealloc(
                grown_outside,
                Layout::from_size_align(ARENA_BYTES * 2, 8).unwrap(),
            );
            // Zeroed memory is zero even where bytes were used and given back.
            let top = arena.top.get();
            let f = arena.alloc(l8);
            f.write(0xff);
            arena.dealloc(f, l8);
            assert_eq!(arena.top.get(), top);
            let zeroed = arena.alloc_zeroed(l8);
            assert_eq!(zeroed, f);
            assert_eq!(zeroed.read(), 0);
        }
    }
}
