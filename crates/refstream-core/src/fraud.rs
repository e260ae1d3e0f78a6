//! Fraud scoring. Placeholder for the minimal rule of the foundation: a referrer equal to the
//! referee is rejected.
