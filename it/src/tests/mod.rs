//! The tests, one module per concern.

mod bad_input;
mod cache;
mod cli;
mod corrupt;
mod dashboard;
mod image;
mod ipv6;
mod notify;
mod preheat;
mod pullthrough;
mod registry;
mod request_id;
mod resume;
mod s3;
mod swarm;
mod tls;
mod zones;
