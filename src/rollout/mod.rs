//! The rollout lifecycle (pure).
