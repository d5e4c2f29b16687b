//! Shoal's load-test harness. [`cluster`] starts a whole Shoal cluster in one process (a
//! tracker, origins with a local-directory backend, agents on distinct loopback addresses);
//! [`pull`] makes every agent fetch a blob and reports where the bytes came from;
//! [`scenario`] drives richer workloads (image layers, many blobs, late joiners, churn) in every
//! mode: in-process, [`processes`], [`netns`] (namespaces with tc-capped links) and [`remote`];
//! [`faults`] runs the fault matrix on the real binaries, and [`soak`] the long loop that
//! watches their memory and file descriptors.

// Harness code: counts, sizes and addresses here are small, and no file offsets are computed.
#![allow(clippy::cast_possible_truncation)]

pub mod baseline;
pub mod bound;
pub mod cluster;
pub mod faults;
pub mod modes;
pub mod netns;
pub mod processes;
pub mod pull;
pub mod remote;
pub mod report;
pub mod run;
pub mod s3;
pub mod scenario;
pub mod sim;
pub mod soak;
