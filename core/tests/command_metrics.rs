//! The command handler's metrics: the aggregate cache's hits, misses,
//! stale refreshes and evictions, its size, the commands per batch and
//! the conflicts, each labelled with the aggregate type.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, SharedString, Unit};
use strata_core::testing::DelayedAppends;
use strata_core::testing::fixtures::counter::Counter as Tally;
use strata_core::{CacheOptions, CommandHandler, CommandHandlerOptions, InMemoryEventStore, Upcasters};

/// Every value recorded, by metric name (with its `aggregate` label).
#[derive(Default)]
struct Recorded {
    values: Mutex<HashMap<String, Arc<Values>>>,
}

/// A counter's or gauge's bits, and a histogram's samples.
#[derive(Default)]
struct Values {
    bits: AtomicU64,
    samples: Mutex<Vec<f64>>,
}

impl HistogramFn for Values {
    fn record(&self, value: f64) {
        self.samples.lock().expect("not poisoned").push(value);
    }
}

impl Recorded {
    fn values(&self, key: &Key) -> Arc<Values> {
        let aggregate = key
            .labels()
            .find(|l| l.key() == "aggregate")
            .map(|l| l.value().to_owned());
        let name = format!("{}{{{}}}", key.name(), aggregate.unwrap_or_default());
        Arc::clone(self.values.lock().expect("not poisoned").entry(name).or_default())
    }

    fn get(&self, name: &str) -> Option<Arc<Values>> {
        self.values.lock().expect("not poisoned").get(name).cloned()
    }

    fn counter(&self, name: &str) -> u64 {
        self.get(name).map_or(0, |v| v.bits.load(Ordering::SeqCst))
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        self.get(name)
            .map(|v| f64::from_bits(v.bits.load(Ordering::SeqCst)))
    }

    fn samples(&self, name: &str) -> Vec<f64> {
        self.get(name)
            .map(|v| v.samples.lock().expect("not poisoned").clone())
            .unwrap_or_default()
    }
}

impl metrics::Recorder for Recorded {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Bits(self.values(key))))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Bits(self.values(key))))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.values(key))
    }
}

/// A counter or gauge over [`Values::bits`].
struct Bits(Arc<Values>);

impl metrics::CounterFn for Bits {
    fn increment(&self, value: u64) {
        self.0.bits.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.bits.fetch_max(value, Ordering::SeqCst);
    }
}

impl metrics::GaugeFn for Bits {
    fn increment(&self, value: f64) {
        self.set(f64::from_bits(self.0.bits.load(Ordering::SeqCst)) + value);
    }
    fn decrement(&self, value: f64) {
        self.increment(-value);
    }
    fn set(&self, value: f64) {
        self.0.bits.store(value.to_bits(), Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_reports_its_cache_batches_and_conflicts() -> Result<(), Box<dyn std::error::Error>> {
    let recorded: &'static Recorded = Box::leak(Box::default());
    metrics::set_global_recorder(recorded).expect("the only recorder of this binary");
    let store = DelayedAppends::new(InMemoryEventStore::new(), Duration::from_millis(2));
    let options = CommandHandlerOptions {
        cache: Some(CacheOptions {
            max_entries: 2,
            ..CacheOptions::default()
        }),
        ..CommandHandlerOptions::default()
    };
    let handler = CommandHandler::<Tally, _>::with_options(store.clone(), Upcasters::new(), options.clone());

    // A miss, then hits; a third stream evicts the least recently used.
    for id in ["a", "a", "a", "b", "c"] {
        handler.execute(id, 1).await?;
    }
    assert_eq!(recorded.counter("strata_command_cache_misses_total{counter}"), 3);
    assert_eq!(recorded.counter("strata_command_cache_hits_total{counter}"), 2);
    assert_eq!(
        recorded.counter("strata_command_cache_evictions_total{counter}"),
        1
    );
    assert_eq!(recorded.gauge("strata_command_cache_entries{counter}"), Some(2.0));
    assert!(
        recorded
            .gauge("strata_command_cache_bytes{counter}")
            .is_some_and(|b| b > 0.0)
    );

    // Another handler (another process) appends to "c": this one's cache
    // is stale, its append conflicts, and it reads the new event.
    let other = CommandHandler::<Tally, _>::with_options(store.clone(), Upcasters::new(), options);
    other.execute("c", 1).await?;
    handler.execute("c", 1).await?;
    assert_eq!(recorded.counter("strata_command_conflicts_total{counter}"), 1);
    assert_eq!(
        recorded.counter("strata_command_cache_stale_refreshes_total{counter}"),
        1
    );

    // Eight concurrent commands on one stream: fewer batches than commands,
    // every command in one.
    let before = recorded.samples("strata_command_batch_commands{counter}").len();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let handler = handler.clone();
            tokio::spawn(async move { handler.execute("d", 1).await })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let batches = recorded.samples("strata_command_batch_commands{counter}")[before..].to_vec();
    assert_eq!(batches.iter().sum::<f64>(), 8.0);
    assert!(batches.len() < 8, "{batches:?}");
    Ok(())
}
