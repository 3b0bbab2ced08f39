//! pushline's end-to-end tests, in one test binary: every module starts what it needs (real
//! nats-server and redis-server processes, the services, mock providers) on ports of its
//! own, so the tests run in parallel. One binary instead of one per file keeps the build
//! small: each test binary links the whole workspace.

mod authorization;
mod browser;
mod callbacks;
mod credentials;
mod devices;
mod distributed;
mod egress;
mod end_to_end;
mod hms;
mod inapp;
mod inapp_mqtt;
mod inbox;
mod inbox_live;
mod ingest;
mod listeners;
mod producers;
mod prune_guard;
mod pushctl;
mod registry;
mod replays;
mod topology;
mod tracking;
mod upgrade;
mod webhook_to_jobs;
mod webhooks;
mod webpush;
