//! Per-connection change counters that JS can read without calling into Rust.
//!
//! Every cached connection owns a slot. Any change to it (new token, revoked, deleted) bumps
//! the slot's counter. The JS wrapper memoizes the credential it was handed together with the
//! counter value, and on each call compares that value with the live counter: equal means the
//! memo is still right, at the cost of one typed-array read.
//!
//! Counters live in fixed pages that never move once allocated, so a page can be exposed to JS
//! as an external `ArrayBuffer` (the binding keeps the page alive while JS holds it).

use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Slots per page: 16 Ki counters, 64 KiB.
pub const PAGE_SLOTS: usize = 1 << 14;

/// One page of counters.
pub struct GenerationPage {
    cells: Box<[AtomicU32]>,
}

impl GenerationPage {
    fn new() -> Self {
        Self {
            cells: (0..PAGE_SLOTS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// The counters, for exposing the page's memory to JS.
    pub fn cells(&self) -> &[AtomicU32] {
        &self.cells
    }
}

/// The counter table of one engine.
#[derive(Default)]
pub struct Generations {
    pages: RwLock<Vec<Arc<GenerationPage>>>,
    free: Mutex<FreeSlots>,
}

#[derive(Default)]
struct FreeSlots {
    released: Vec<u32>,
    next_unused: u32,
}

impl Generations {
    /// Takes a slot for a new cache entry. A reused slot's counter keeps counting up, so a memo
    /// made for the slot's previous owner can never match. Returns the slot and its generation.
    pub fn allocate(&self) -> (u32, u32) {
        let slot = {
            let mut free = self.free.lock();
            free.released.pop().unwrap_or_else(|| {
                let slot = free.next_unused;
                free.next_unused += 1;
                slot
            })
        };
        let page = slot as usize / PAGE_SLOTS;
        if self.pages.read().len() <= page {
            let mut pages = self.pages.write();
            while pages.len() <= page {
                pages.push(Arc::new(GenerationPage::new()));
            }
        }
        (slot, self.bump(slot))
    }

    /// Marks the slot's connection as changed. Release ordering: whatever the cache wrote
    /// before the bump is visible to a reader that sees the new value.
    pub fn bump(&self, slot: u32) -> u32 {
        self.cell(slot, |cell| {
            cell.fetch_add(1, Ordering::Release).wrapping_add(1)
        })
    }

    pub fn current(&self, slot: u32) -> u32 {
        self.cell(slot, |cell| cell.load(Ordering::Acquire))
    }

    /// Gives a slot back after its entry left the cache; bumps it first.
    pub fn release(&self, slot: u32) {
        self.bump(slot);
        self.free.lock().released.push(slot);
    }

    /// The page holding `index * PAGE_SLOTS ..`, if allocated.
    pub fn page(&self, index: usize) -> Option<Arc<GenerationPage>> {
        self.pages.read().get(index).cloned()
    }

    fn cell<T>(&self, slot: u32, f: impl FnOnce(&AtomicU32) -> T) -> T {
        let pages = self.pages.read();
        f(&pages[slot as usize / PAGE_SLOTS].cells[slot as usize % PAGE_SLOTS])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_up_and_reused_slots_never_repeat_a_value() {
        let g = Generations::default();
        let (a, first) = g.allocate();
        assert_eq!(g.current(a), first);
        assert_eq!(g.bump(a), first + 1);
        g.release(a);
        let (b, _) = g.allocate();
        assert_eq!(a, b, "released slots are reused");
        assert!(g.current(b) > first + 1);
    }

    #[test]
    fn pages_are_allocated_on_demand_and_stay_put() {
        let g = Generations::default();
        let (first, _) = g.allocate();
        let page0 = g.page(0).unwrap();
        let ptr = page0.cells().as_ptr();
        for _ in 0..PAGE_SLOTS + 1 {
            g.allocate();
        }
        assert!(g.page(1).is_some());
        assert_eq!(
            g.page(0).unwrap().cells().as_ptr(),
            ptr,
            "a page never moves"
        );
        g.bump(first);
        assert_eq!(
            page0.cells()[first as usize].load(Ordering::Acquire),
            g.current(first)
        );
    }
}
