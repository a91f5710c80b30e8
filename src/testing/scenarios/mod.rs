//! The scenarios of the conformance suite: one `pub async fn` each, taking the
//! [`Harness`](crate::testing::Harness) to run on. Each panics, naming the harness and what
//! differed, when the store does not behave.
//!
//! One file per section of the suite; every scenario is re-exported here, so
//! `ckpt::testing::fork_copies_the_source` names it wherever it lives. The scenarios' names are
//! listed once, in `__conformance_scenario_list!` below: adding a scenario is its function in the
//! file of its section plus its name in that list, and every `conformance_tests!` line runs it.

mod batches;
mod concurrency;
mod damage;
mod delete_clear;
mod export;
mod faults;
mod fork;
mod gc;
mod invalid_input;
mod rekey;
mod reopen;
mod round_trips;
mod search;
mod search_table;
mod storage;
mod tree;
mod versions;
mod watch;
mod writes;

pub use batches::*;
pub use concurrency::*;
pub use damage::*;
pub use delete_clear::*;
pub use export::*;
pub use faults::*;
pub use fork::*;
pub use gc::*;
pub use invalid_input::*;
pub use rekey::*;
pub use reopen::*;
pub use round_trips::*;
pub use search::*;
pub use search_table::*;
pub use storage::*;
pub use tree::*;
pub use versions::*;
pub use watch::*;
pub use writes::*;

// The scenarios were written one level up (in `testing/scenarios.rs`) and name their siblings in
// `testing` as `super::...`; these imports keep those paths meaning the same one level down.
use super::{faulty_store, is_injected, Call, Elsewhere, Fault, FaultControl, Faulty};

/// The one list of conformance scenarios, by the file that holds them, handed to the macro
/// `$crate::$callback!` after `$args` as `kind name,` pairs.
///
/// A scenario's kind says which layouts run it: `any`, every harness; `cross_execution`, it writes
/// one batch across executions, which Redis Cluster's `shard=execution` layout refuses by design
/// (`cluster_shard_execution_refuses_cross_slot_batches` in `tests/redis.rs` checks the refusal).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_scenario_list {
    ($callback:ident! { $($args:tt)* }) => {
        $crate::$callback! { $($args)*
            // round_trips.rs
            any round_trips_nested_states,
            any round_trips_deep_states,
            any round_trips_unicode,
            any round_trips_binary,
            any round_trips_empty_states,
            any round_trips_edit_sequences,
            any round_trips_map_key_orders,
            any metadata_round_trips,
            any round_trips_large_states,
            // versions.rs
            any versions_ids_parents_and_timestamps,
            any list_latest_and_at_version,
            any not_found_names_what_was_missing,
            any history_is_newest_first_and_filters,
            // delete_clear.rs
            any delete_hides_exactly_one_checkpoint,
            any delete_of_the_latest_moves_latest_back,
            any clear_removes_only_its_execution,
            any clear_never_reuses_versions,
            // fork.rs
            any fork_copies_the_source,
            any fork_refuses_bad_sources_and_targets,
            // tree.rs
            any branches_form_a_tree,
            any a_saves_parent_must_be_live_in_its_execution,
            // writes.rs
            any writes_belong_to_their_checkpoint,
            // batches.rs
            cross_execution save_batch_is_ordered_and_consecutive,
            cross_execution save_batch_is_all_or_nothing,
            any executions_summarise_live_checkpoints,
            // reopen.rs
            any reopen_keeps_every_projection,
            any a_long_execution_reopens_from_its_record,
            any listing_more_executions_than_are_cached_reads_summaries,
            any two_stores_see_each_other,
            // concurrency.rs
            any concurrent_saves_are_all_kept,
            any save_after_checks_the_latest,
            any save_after_races_have_one_winner,
            any save_with_parent_after_checks_the_latest,
            cross_execution backend_append_is_compare_and_append,
            any backend_blobs_follow_the_contract,
            any concurrent_plain_saves_from_two_stores,
            any plain_saves_survive_contention,
            // watch.rs
            any watch_yields_new_saves_in_order,
            any watch_starts_at_the_call,
            any an_unpolled_watch_does_not_stall_writers,
            // gc.rs
            any gc_reclaims_cleared_and_deleted,
            any gc_keeps_blobs_shared_with_live_checkpoints,
            any gc_does_not_break_other_stores,
            any gc_racing_saves_keeps_every_live_checkpoint,
            any gc_elsewhere_never_takes_what_a_save_needs,
            any gc_elsewhere_is_repaired_without_cross_log_atomicity,
            any a_dead_gc_is_ended_after_its_lease,
            any retention_keeps_what_it_must,
            // storage.rs
            any deltas_keep_storage_small,
            any long_delta_chains_load_every_version,
            any growing_long_strings_cost_what_changed,
            // invalid_input.rs
            any invalid_input_is_refused_and_harmless,
            // rekey.rs
            any rekey_reseals_everything_in_place,
            any loads_survive_a_rekey_elsewhere,
            // export.rs
            any export_import_keeps_everything,
            // faults.rs
            any save_batch_is_all_or_nothing_under_faults,
            // damage.rs
            any damage_is_contained,
            // search.rs
            any search_finds_text_metadata_and_nodes,
            any search_follows_delete_clear_fork_and_gc,
            any indexed_search_agrees_with_scan,
            // search_table.rs
            any search_table_keeps_keys_in_order,
        }
    };
}
