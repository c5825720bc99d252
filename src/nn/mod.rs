//! Neural-network modules (arrive with the end-to-end training issue).
