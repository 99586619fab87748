//! NFQUEUE access (being written).
