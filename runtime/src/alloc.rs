//! The heap bytes a process has allocated and not yet freed, as the binaries' global
//! allocator counts them (`cap::Cap` around mimalloc, one atomic counter), reported by
//! [`crate::Admin`] as `shoal_heap_bytes`.
//!
//! RSS alone cannot tell a leak from an allocator that keeps freed pages: the two together
//! can (the soak, `shoal-loadtest soak`, samples both). A process whose allocator gives no
//! count (tests, embedders) reports no `shoal_heap_bytes` at all rather than a zero.
//!
//! [`no_huge_pages`] keeps the kernel from backing the process's memory with transparent huge
//! pages. mimalloc asks for them on its arena (`madvise(MADV_HUGEPAGE)`), and khugepaged,
//! whose default `max_ptes_none` is 511, then collapses any 2 MiB range with a single page in
//! use into a whole huge page: in the one-hour soak a long-running agent's RSS stepped from 44
//! to 51 MiB at a random moment 23 minutes in while its heap stayed at 11–14 MiB, and 26 MiB
//! of its RSS were huge pages (the other agents, 8–14 MiB). A node's memory should follow
//! what it holds, not when the kernel scanned it.

use std::sync::OnceLock;

static SOURCE: OnceLock<fn() -> usize> = OnceLock::new();

/// Makes `shoal_heap_bytes` read `live`, the binary's count of heap bytes allocated and not
/// freed (its global allocator's). The first call wins.
pub fn count_heap_with(live: fn() -> usize) {
    let _ = SOURCE.set(live);
}

/// Heap bytes live now, if the binary gave a count ([`count_heap_with`]).
pub fn heap_bytes() -> Option<u64> {
    SOURCE.get().map(|f| f() as u64)
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`: every mapping,
/// existing ones included; children inherit it). See the module docs.
pub fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!("cannot turn transparent huge pages off: {e}");
    }
}

/// `shoal_heap_bytes`, read at each scrape.
pub(crate) struct HeapCollector {
    desc: prometheus::core::Desc,
}

impl HeapCollector {
    pub(crate) fn new() -> prometheus::Result<HeapCollector> {
        let desc = prometheus::core::Desc::new(
            "shoal_heap_bytes".into(),
            "heap bytes allocated and not yet freed (the global allocator's count; RSS also holds \
             what the allocator keeps for reuse)"
                .into(),
            Vec::new(),
            Default::default(),
        )?;
        Ok(HeapCollector { desc })
    }
}

impl prometheus::core::Collector for HeapCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let Some(bytes) = heap_bytes() else { return Vec::new() };
        let mut g = prometheus::proto::Gauge::default();
        g.set_value(bytes as f64);
        let mut m = prometheus::proto::Metric::default();
        m.set_gauge(g);
        let mut f = prometheus::proto::MetricFamily::default();
        f.set_name(self.desc.fq_name.clone());
        f.set_help(self.desc.help.clone());
        f.set_field_type(prometheus::proto::MetricType::GAUGE);
        f.mut_metric().push(m);
        vec![f]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Collector;

    #[test]
    fn the_gauge_appears_once_a_count_is_given() {
        let c = HeapCollector::new().unwrap();
        if SOURCE.get().is_none() {
            assert!(c.collect().is_empty(), "no count, no gauge (not a zero)");
        }
        count_heap_with(|| 12345);
        let f = c.collect();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].name(), "shoal_heap_bytes");
        assert_eq!(f[0].get_metric()[0].get_gauge().get_value(), 12345.0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_are_turned_off() {
        no_huge_pages();
        assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
    }
}
