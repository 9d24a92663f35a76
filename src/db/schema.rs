//! The tables, written by hand with types both backends share (see the migrations).
#![allow(missing_docs)]

diesel::table! {
    accounts (id) {
        id -> BigInt,
        name -> Text,
        display_name -> Text,
        description -> Text,
        starts_at -> Timestamp,
        ends_at -> Timestamp,
        status -> Text,
        overdraft_micros -> BigInt,
        credited_micros -> BigInt,
        charged_micros -> BigInt,
        held_micros -> BigInt,
        entry_count -> BigInt,
        chain_head -> Text,
        settings_count -> BigInt,
        settings_head -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    account_partitions (account_id, partition) {
        account_id -> BigInt,
        partition -> Text,
        limit_micros -> Nullable<BigInt>,
        charged_micros -> BigInt,
        held_micros -> BigInt,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    holds (id) {
        id -> BigInt,
        account_id -> BigInt,
        partition -> Nullable<Text>,
        cluster -> Nullable<Text>,
        job_id -> Nullable<Text>,
        user_name -> Nullable<Text>,
        estimate_micros -> BigInt,
        buffer -> Text,
        amount_micros -> BigInt,
        remaining_micros -> BigInt,
        charged_micros -> BigInt,
        state -> Text,
        flags -> Text,
        expires_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        resolved_at -> Nullable<Timestamp>,
        idempotency_key -> Text,
    }
}

diesel::table! {
    journal (id) {
        id -> BigInt,
        account_id -> BigInt,
        seq -> BigInt,
        kind -> Text,
        amount_micros -> BigInt,
        credited_delta_micros -> BigInt,
        charged_delta_micros -> BigInt,
        held_delta_micros -> BigInt,
        hold_id -> Nullable<BigInt>,
        cluster -> Nullable<Text>,
        job_id -> Nullable<Text>,
        partition -> Nullable<Text>,
        user_name -> Nullable<Text>,
        actor -> Text,
        reason -> Text,
        flags -> Text,
        idempotency_key -> Text,
        request_digest -> Text,
        effective_at -> Timestamp,
        recorded_at -> Timestamp,
        prev_hash -> Text,
        hash -> Text,
    }
}

diesel::table! {
    account_changes (id) {
        id -> BigInt,
        account_id -> BigInt,
        field -> Text,
        old_value -> Text,
        new_value -> Text,
        actor -> Text,
        reason -> Text,
        changed_at -> Timestamp,
        seq -> BigInt,
        prev_hash -> Text,
        hash -> Text,
    }
}

diesel::joinable!(account_partitions -> accounts (account_id));
diesel::joinable!(holds -> accounts (account_id));
diesel::joinable!(journal -> accounts (account_id));
diesel::joinable!(journal -> holds (hold_id));
diesel::joinable!(account_changes -> accounts (account_id));

diesel::allow_tables_to_appear_in_same_query!(
    accounts,
    account_partitions,
    holds,
    journal,
    account_changes
);
