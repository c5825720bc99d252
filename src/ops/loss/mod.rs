//! Losses: cross-entropy and NT-Xent.
