//! The heap bytes a process has allocated and not yet freed, as the binaries' global
//! allocator counts them (`cap::Cap` around mimalloc, one atomic counter), reported by
//! [`crate::Admin`] as `shoal_heap_bytes`.
//!
//! RSS alone cannot tell a leak from an allocator that keeps freed pages: the two together
//! can (the soak, `shoal-loadtest soak`, samples both). A process whose allocator gives no
//! count (tests, embedders) reports no `shoal_heap_bytes` at all rather than a zero.

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
}
