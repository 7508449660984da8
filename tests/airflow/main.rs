//! taskpulse following a real Apache Airflow (`--airflow-db`, `src/engines/airflow/`): the
//! Airflow that `scripts/test.sh` installs into `.venv-airflow` (`tests/airflow/requirements.txt`)
//! runs on a fresh metadata database of the test PostgreSQL with the DAGs of
//! `tests/airflow/dags/`, and every check reads taskpulse's HTTP API and `/metrics`. A binary of
//! its own, with one test: the engine takes about 20 s to come up, so it is started once and
//! every scenario runs on it at the same time. Without `airflow` the test is skipped, except
//! under `TASKPULSE_REQUIRE_TOOLS=1`, where it fails.

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "../api/tools.rs"]
mod tools;

#[allow(dead_code)]
mod drift;
#[allow(dead_code)]
#[path = "../api/prom.rs"]
mod prom;

mod dashboards;
mod end_to_end;
mod engine;
mod status_page;
