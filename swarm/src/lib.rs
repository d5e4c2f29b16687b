//! shoal-swarm.
