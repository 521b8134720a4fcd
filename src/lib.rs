//! hgpt: small-LLM pretraining with a harmonic output head.
//!
//! Reading order: `config` (what a run is), `head` (the harmonic head's math),
//! `backend` (the ops, with the CPU reference), `model` (GPT-2 against the
//! Backend trait), `data` (corpus and loaders), `train` (the loop).

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
pub mod eval;
pub mod export;
pub mod generate;
pub mod head;
pub mod llc;
pub mod memory;
pub mod model;
pub mod observe;
pub mod plot;
pub mod probe;
pub mod train;
