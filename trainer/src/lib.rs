//! Offline trainer for the open-vocabulary head: data (built-in synthetic scenes or folder data
//! sets), the frozen backbone's features, the head in burn, export to the model directory the
//! engine loads, and evaluation through the engine.
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod eval;
pub mod export;
pub mod features;
pub mod fixture;
pub mod layouts;
pub mod model;
pub mod outputs;
pub mod plot;
pub mod synth;
pub mod train;
pub mod zs3;
