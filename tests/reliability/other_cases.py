"""The reliability cases that are not input files: bad configs and models, faults during a run, hostile inputs.

They live in other test files (each needs its own set-up: a trained model, a killed process, a tracking server that
does not answer); this table names each with the outcome it checks and the pytest node id that checks it, and
``docs/reliability.md`` lists them (``python tests/reliability/report.py``). ``test_inputs.py`` checks that every
node id names a test function that exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class OtherCase:
    group: str
    what: str
    expected: str
    node: str  # pytest node id, relative to the repository root

    @property
    def file(self) -> Path:
        return REPO / self.node.split("::")[0]

    @property
    def function(self) -> str:
        return self.node.split("::")[-1]


CONFIG, FAULT, SECURITY = "config / model", "fault", "security"
_MI = "tests/test_model_integrity.py::"
_BF = "tests/test_batch_faults.py::"
_B = "tests/test_batch.py::"
_TO = "tests/test_tracking_offline.py::"

OTHER_CASES: list[OtherCase] = [
    # -- configs and models
    OtherCase(CONFIG, "config with an unknown key, a bad value or a wrong type (11 kinds)",
              "ConfigError naming the key",
              "tests/test_config.py::test_validation_errors_name_the_key"),
    OtherCase(CONFIG, "config missing a required key, invalid YAML, unreadable file, overlay cycle",
              "ConfigError saying which", "tests/test_config.py::test_missing_required_and_bad_yaml"),
    OtherCase(CONFIG, "config or override holding a YAML python tag (os.system, Popen)",
              "ConfigError naming the file; the payload never runs",
              "tests/test_config.py::test_yaml_python_tags_are_refused_and_never_run"),
    OtherCase(CONFIG, "checkpoint whose weights do not fit the network (shapes, missing weights)",
              "exit 2, one line naming the file and the weight; no output folder",
              _MI + "test_state_dict_that_does_not_fit_the_network_is_refused"),
    OtherCase(CONFIG, "checkpoint with NaN weights", "exit 2, one line naming the file and the weight; no output",
              _MI + "test_nan_weights_are_refused"),
    OtherCase(CONFIG, "label map the network cannot produce (3 labels, 2 outputs)", "exit 2, one line; no output",
              _MI + "test_labels_the_network_cannot_produce_are_refused"),
    OtherCase(CONFIG, "truncated checkpoint file", "exit 2, 'not a readable checkpoint'; no output",
              _MI + "test_truncated_checkpoint_is_refused"),
    OtherCase(CONFIG, "registered checkpoint changed after registration", "refused: SHA-256 does not match the pin",
              _MI + "test_registered_checkpoint_changed_after_registration_is_refused"),
    OtherCase(CONFIG, "an output folder holding results of another model or naming key",
              "ConfigError before anything is written",
              _B + "test_an_output_folder_refuses_results_of_another_model"),
    OtherCase(CONFIG, "--resume with another network, another run's folder, a missing checkpoint",
              "ConfigError saying which", "tests/test_training_resume.py::test_resume_refuses_a_different_model"),
    OtherCase(CONFIG, "training that diverges (NaN input in a later epoch)",
              "TrainingDiverged at epoch/step; the earlier checkpoint kept, nothing after it",
              "tests/test_training_diverged.py::test_nan_input_in_a_later_epoch_keeps_the_earlier_checkpoint"),
    OtherCase(CONFIG, "NaN loss in a tracked training (train + register)",
              "TrainingDiverged; the MLflow run FAILED with the reason; no model version registered",
              "tests/test_workflow_mlflow.py::test_a_diverged_run_is_failed_in_mlflow_and_registers_nothing"),
    OtherCase(CONFIG, "training with a huge learning rate", "TrainingDiverged at epoch 0; no checkpoint",
              "tests/test_training_diverged.py::test_huge_learning_rate_diverges_without_any_checkpoint"),
    # -- faults during a run
    OtherCase(FAULT, "batch killed (SIGKILL) midway, then run again",
              "the rerun keeps the DONE items and ends with the clean run's outputs; no temp files",
              _B + "test_sigkill_midway_then_rerun_gives_the_clean_run_outputs"),
    OtherCase(FAULT, "batch SIGKILLed at 5 seeded points (20 series; the benchmark: 20 kills of 50), resumed each time",
              "labels identical to a clean run; no temp file, no duplicate row, nothing DONE lost; <= 1 case redone "
              "per kill", "tests/test_batch_kill_resume.py::test_seeded_kills_then_resume_give_the_clean_run_outputs"),
    OtherCase(FAULT, "batch stopped with SIGTERM", "exit 143, the case in flight rolled back, reports written",
              _BF + "test_sigterm_rolls_back_the_case_in_flight_and_writes_the_reports"),
    OtherCase(FAULT, "a case that raises an unexpected error",
              "FAILED with a scrubbed error, retried by the next run",
              _B + "test_a_failed_item_is_recorded_scrubbed_and_retried_by_the_next_run"),
    OtherCase(FAULT, "a DONE item whose output was deleted or altered", "redone by the next run",
              _B + "test_a_done_item_whose_output_was_deleted_or_altered_is_redone"),
    OtherCase(FAULT, "a worker process that hangs past the case time limit",
              "that case FAILED (WorkerTimeout), a replacement worker finishes the batch",
              "tests/test_batch_timeout.py::"
              "test_a_hung_worker_fails_only_its_case_and_a_replacement_finishes_the_batch"),
    OtherCase(FAULT, "a Ray actor that hangs past the case time limit", "that case FAILED, the actor replaced",
              "tests/test_batch_timeout.py::test_a_hung_ray_actor_fails_only_its_case_and_is_replaced"),
    OtherCase(FAULT, "full disk (file size limit) for outputs / for the ledger",
              "case FAILED, nothing partial / run stopped with one line; the next run completes",
              _BF + "test_a_full_disk_fails_the_case_or_stops_the_run_with_one_line_and_nothing_partial"),
    OtherCase(FAULT, "unwritable output folder", "exit 2, one line, before the model is loaded",
              _BF + "test_unwritable_output_is_refused_at_preflight"),
    OtherCase(FAULT, "an input file that grows while its case is segmented", "Q:INPUT_CHANGED, segmented next run",
              _BF + "test_an_input_changing_during_its_segmentation_is_quarantined_and_retried"),
    OtherCase(FAULT, "an input that changed after it was segmented", "segmented again by the next run",
              _BF + "test_an_input_that_changed_after_it_was_segmented_is_segmented_again"),
    OtherCase(FAULT, "training killed (SIGKILL) mid-epoch, resumed", "final weights identical bit for bit",
              "tests/test_training_resume.py::test_resume_after_sigkill_gives_identical_weights"),
    OtherCase(FAULT, "last checkpoint truncated when resuming", "resumes from the one before; both damaged: refused",
              "tests/test_training_resume.py::test_a_damaged_last_checkpoint_resumes_from_the_one_before"),
    OtherCase(FAULT, "tracking server unreachable", "training finishes in seconds, everything spooled locally",
              _TO + "test_unreachable_server_spools_everything_quickly"),
    OtherCase(FAULT, "tracking server that accepts connections and never answers", "at most the timeout lost",
              _TO + "test_black_hole_server_costs_at_most_the_timeout"),
    OtherCase(FAULT, "training killed (SIGKILL) while the tracking server hangs",
              "every logged value in the journal; medseg replay sends them all once and closes the run KILLED",
              "tests/test_tracking_replay.py::test_a_run_killed_while_the_server_hangs_is_replayed_by_the_command"),
    OtherCase(FAULT, "a spool replayed twice, into SQLite or a file store",
              "one value per key and step",
              "tests/test_tracking_replay.py::test_replaying_twice_keeps_one_value_per_step"),
    OtherCase(FAULT, "full disk under the tracking journal",
              "training never sees an error; no journal record repeated; the lock released",
              "tests/test_tracking_replay.py::test_a_full_disk_never_raises_into_training_nor_duplicates_a_record"),
    OtherCase(FAULT, "a journaled call the store rejects (a changed parameter value)",
              "recorded as rejected with its reason; the workdir's later spools still replayed",
              "tests/test_tracking_replay.py::"
              "test_a_call_the_store_rejects_is_recorded_and_later_spools_are_still_replayed"),
    OtherCase(FAULT, "tracking server hanging during training", "the training thread never waits",
              _TO + "test_training_never_waits_for_a_hung_server"),
    OtherCase(FAULT, "a second batch started on an output folder in use", "refused: the folder is locked",
              "tests/test_batch_units.py::test_a_second_run_on_a_locked_output_folder_is_refused"),
    OtherCase(FAULT, "the model alias moved to another version while a batch runs",
              "every worker keeps the version resolved at the start, recorded per output",
              _BF + "test_workers_keep_the_version_an_alias_had_when_the_run_started"),
    OtherCase(FAULT, "missing input path", "exit 2, FILE_NOT_FOUND",
              "tests/test_cli.py::test_missing_input_exit_code"),
    # -- security and privacy
    OtherCase(SECURITY, "checkpoint carrying a pickle payload", "refused; the payload never runs",
              _MI + "test_pickle_payload_never_runs"),
    OtherCase(SECURITY, "file and folder names with ';', '$(...)', back-quotes, newlines",
              "segmented like any other, listed verbatim; nothing run",
              _BF + "test_hostile_file_names_are_data_never_commands"),
    OtherCase(SECURITY, "earlier results inside the input, links to files outside it, link loops",
              "never taken as input; discovery not trapped",
              _BF + "test_outputs_inside_the_input_and_links_outside_it_are_never_input"),
    OtherCase(SECURITY, "canary identifiers in every tag and folder name of a batch",
              "only in the SEGs and quarantine.csv paths; not in logs, names, reports",
              _B + "test_canary_identifiers_appear_nowhere_but_in_the_seg_and_the_quarantine_paths"),
    OtherCase(SECURITY, "canary identifiers in every input of this battery's batch",
              "only in quarantine.csv paths; not in logs (DEBUG), stdout/stderr, ledger, reports, labels",
              "tests/reliability/test_batch_battery.py::"
              "test_no_canary_identifier_in_anything_the_batch_battery_wrote_or_logged"),
    OtherCase(SECURITY, "medseg info on an archive with identifiers", "series listed without names or descriptions",
              "tests/test_cli.py::test_info_lists_series_without_patient_identifiers"),
    OtherCase(SECURITY, "MLFLOW_TRACKING_URI set, no --tracking-uri", "segment and load_model use it, as MLflow's tools do",
              "tests/test_workflow_mlflow.py::test_segment_and_load_model_honour_mlflow_tracking_uri"),
    OtherCase(SECURITY, "tracking calls (log, register, resolve, replay)",
              "os.environ and MLflow's global tracking URI untouched",
              "tests/test_tracking_environment.py::test_cycle_leaves_the_environment_and_mlflow_global_state_alone"),
]  # fmt: skip
