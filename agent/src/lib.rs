//! shoal-agent.
