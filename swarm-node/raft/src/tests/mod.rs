mod cluster;
mod suite;
