//! otad: a small server for Apple over-the-air (OTA) enrollment.
//!
//! Layers go one way: [`http`] adapts requests to the [`ota`] phases and the [`scep`] service;
//! those use [`cms`] (BER normalisation, SignedData, EnvelopedData) and [`pki`] (keys, our CA,
//! Apple's pinned anchors); everything that must survive a restart lives in [`store`].
//! [`commands`] holds the admin commands, [`simulate`] a test device.

pub mod admin;
pub mod cms;
pub mod commands;
pub mod config;
pub mod context;
pub mod decide;
pub mod events;
pub mod fsck;
#[doc(hidden)]
pub mod fuzzing;
pub mod gate;
pub mod hook;
pub mod http;
pub mod httpclient;
pub mod issuance;
pub mod logger;
pub mod metrics;
pub mod ota;
pub mod pki;
pub mod plistshape;
pub mod scep;
pub mod simulate;
pub mod store;
pub mod systemd;
pub mod tls;
