//! Every engine's settings in one clap group, and the engines of this build made from them.
//!
//! This is the one place that lists the engines: [`crate::cli`] flattens [`EngineSettings`]
//! into each command that takes engine settings, and [`crate::app`] asks [`build`] for the
//! engines, so neither names one. Adding an engine is its folder plus its line in
//! [`EngineSettings`] and in [`EngineSettings::groups`] (its
//! [`EngineGroup`] is implemented in its folder).

use clap::Args;

use super::airflow::AirflowSettings;
use super::conductor::ConductorSettings;
use super::kestra::KestraSettings;
use super::{Engine, EngineGroup, EngineInit};
use crate::error::Result;

/// The settings of every engine of this build.
#[derive(Debug, Clone, Default, Args)]
pub struct EngineSettings {
    #[command(flatten)]
    pub conductor: ConductorSettings,
    #[command(flatten)]
    pub kestra: KestraSettings,
    #[command(flatten)]
    pub airflow: AirflowSettings,
}

impl EngineSettings {
    /// Each engine's group, in the order the engines are built.
    fn groups(&self) -> Vec<&dyn EngineGroup> {
        vec![&self.conductor, &self.kestra, &self.airflow]
    }

    /// Every engine's settings checked.
    pub fn validate(&self) -> Result<()> {
        self.groups().iter().try_for_each(|g| g.validate())
    }
}

/// The engines of this build, made from their settings.
pub fn build(settings: &EngineSettings, init: &EngineInit) -> Result<Vec<Box<dyn Engine>>> {
    settings.groups().iter().map(|g| g.engine(init)).collect()
}
