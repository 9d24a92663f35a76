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
        charge_count -> BigInt,
        overrun_count -> BigInt,
        unmatched_count -> BigInt,
        open_hold_count -> BigInt,
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
        tasks -> Nullable<BigInt>,
        tasks_charged -> BigInt,
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

diesel::table! {
    spool_files (id) {
        id -> BigInt,
        kind -> Text,
        name -> Text,
        file_key -> Text,
        sha256 -> Text,
        size_bytes -> BigInt,
        outcome -> Text,
        record_id -> Nullable<BigInt>,
        reasons -> Text,
        seen_at -> Timestamp,
        resolved_at -> Nullable<Timestamp>,
        resolved_by -> Nullable<Text>,
        resolution -> Nullable<Text>,
    }
}

diesel::table! {
    cost_records (id) {
        id -> BigInt,
        run_key -> Text,
        job_id -> Text,
        job_base -> BigInt,
        array_task -> Nullable<BigInt>,
        het_offset -> Nullable<BigInt>,
        run -> BigInt,
        account -> Text,
        actual_micros -> BigInt,
        producer_estimate_micros -> Nullable<BigInt>,
        transaction_ref -> Nullable<Text>,
        job_state -> Nullable<Text>,
        exit_code -> Nullable<Text>,
        user_name -> Nullable<Text>,
        partition -> Nullable<Text>,
        submitted_at -> Nullable<Timestamp>,
        started_at -> Nullable<Timestamp>,
        completed_at -> Nullable<Timestamp>,
        export_time -> Nullable<Timestamp>,
        content_digest -> Text,
        status -> Text,
        status_reason -> Text,
        status_detail -> Text,
        hold_id -> Nullable<BigInt>,
        charge_entry_id -> Nullable<BigInt>,
        refund_entry_id -> Nullable<BigInt>,
        estimate_micros -> Nullable<BigInt>,
        charged_account -> Nullable<Text>,
        charged_partition -> Nullable<Text>,
        received_at -> Timestamp,
        reconciled_at -> Nullable<Timestamp>,
        instance_types -> Text,
    }
}

diesel::table! {
    job_end_records (id) {
        id -> BigInt,
        run_key -> Text,
        cluster -> Text,
        job_id -> Text,
        job_base -> BigInt,
        array_task -> Nullable<BigInt>,
        account -> Text,
        partition -> Nullable<Text>,
        user_name -> Nullable<Text>,
        state -> Text,
        exit_code -> Nullable<Text>,
        submitted_at -> Timestamp,
        started_at -> Nullable<Timestamp>,
        ended_at -> Timestamp,
        time_limit -> Nullable<Text>,
        nodes -> Nullable<BigInt>,
        cpus -> Nullable<BigInt>,
        hold_ref -> Nullable<Text>,
        content_digest -> Text,
        received_at -> Timestamp,
    }
}

diesel::table! {
    plans (id) {
        id -> BigInt,
        plan_id -> Text,
        shape -> Text,
        account -> Text,
        max_total_micros -> BigInt,
        should_burst -> Nullable<Bool>,
        max_duration_micros -> Nullable<BigInt>,
        instance_types -> Text,
        instance_count -> Nullable<BigInt>,
        purchasing_option -> Nullable<Text>,
        expected_runtime_ns -> Nullable<BigInt>,
        confidence -> Nullable<Text>,
        generated_at -> Nullable<Timestamp>,
        job_id -> Nullable<Text>,
        content_digest -> Text,
        received_at -> Timestamp,
    }
}

diesel::table! {
    allocation_schedules (id) {
        id -> BigInt,
        account_id -> BigInt,
        amount_micros -> BigInt,
        total_micros -> BigInt,
        frequency -> Text,
        starts_at -> Timestamp,
        ends_at -> Timestamp,
        status -> Text,
        next_period -> BigInt,
        next_due_at -> Nullable<Timestamp>,
        credited_micros -> BigInt,
        credited_count -> BigInt,
        skipped_count -> BigInt,
        description -> Text,
        created_by -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        finished_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    allocation_periods (schedule_id, period) {
        schedule_id -> BigInt,
        period -> BigInt,
        due_at -> Timestamp,
        outcome -> Text,
        amount_micros -> BigInt,
        entry_id -> Nullable<BigInt>,
        effective_at -> Timestamp,
        reason -> Text,
        recorded_at -> Timestamp,
    }
}

diesel::table! {
    allocation_pauses (id) {
        id -> BigInt,
        schedule_id -> BigInt,
        paused_at -> Timestamp,
        resumed_at -> Nullable<Timestamp>,
        catch_up -> Bool,
        paused_by -> Text,
        resumed_by -> Nullable<Text>,
        reason -> Text,
    }
}

diesel::table! {
    grants (id) {
        id -> BigInt,
        number -> Text,
        agency -> Text,
        program -> Text,
        pi -> Text,
        co_pis -> Text,
        institution -> Text,
        department -> Text,
        amount_micros -> BigInt,
        starts_at -> Timestamp,
        ends_at -> Timestamp,
        period_months -> BigInt,
        indirect_rate -> Text,
        federal_award_id -> Text,
        project_code -> Text,
        cost_center -> Text,
        carry_over -> Text,
        status -> Text,
        created_by -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        closed_at -> Nullable<Timestamp>,
        close_reason -> Text,
    }
}

diesel::table! {
    grant_periods (grant_id, number) {
        grant_id -> BigInt,
        number -> BigInt,
        starts_at -> Timestamp,
        ends_at -> Timestamp,
        budget_micros -> BigInt,
        status -> Text,
        carry_in_micros -> BigInt,
        credited_micros -> BigInt,
        spent_micros -> Nullable<BigInt>,
        carried_out_micros -> Nullable<BigInt>,
        expired_micros -> Nullable<BigInt>,
        activated_at -> Nullable<Timestamp>,
        closed_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    grant_links (id) {
        id -> BigInt,
        grant_id -> BigInt,
        account_id -> BigInt,
        share_percent -> Text,
        linked_at -> Timestamp,
        unlinked_at -> Nullable<Timestamp>,
        linked_by -> Text,
        unlinked_by -> Nullable<Text>,
    }
}

diesel::table! {
    grant_period_accounts (grant_id, period, account_id) {
        grant_id -> BigInt,
        period -> BigInt,
        account_id -> BigInt,
        credited_micros -> BigInt,
        credit_entry_id -> Nullable<BigInt>,
        carry_in_micros -> BigInt,
        activated_at -> Timestamp,
        spent_micros -> Nullable<BigInt>,
        carried_micros -> Nullable<BigInt>,
        expired_micros -> Nullable<BigInt>,
        expiry_entry_id -> Nullable<BigInt>,
        closed_at -> Nullable<Timestamp>,
        note -> Text,
    }
}

diesel::table! {
    grant_changes (id) {
        id -> BigInt,
        grant_id -> BigInt,
        field -> Text,
        old_value -> Text,
        new_value -> Text,
        actor -> Text,
        reason -> Text,
        changed_at -> Timestamp,
    }
}

diesel::table! {
    burn_snapshots (account_id, day) {
        account_id -> BigInt,
        day -> Date,
        credited_micros -> BigInt,
        charged_micros -> BigInt,
        held_micros -> BigInt,
        spent_micros -> BigInt,
        period_start -> Timestamp,
        period_end -> Timestamp,
        period_budget_micros -> BigInt,
        period_spent_micros -> BigInt,
        period_expected_micros -> BigInt,
        window_days -> BigInt,
        window_spent_micros -> BigInt,
        window_expected_micros -> BigInt,
        rate_7d_micros -> BigInt,
        rate_30d_micros -> BigInt,
        variance_percent -> Nullable<Text>,
        burn_status -> Text,
        health_score -> BigInt,
        health_band -> Text,
        risk_level -> Text,
        depletion_date -> Nullable<Date>,
        projected_period_micros -> BigInt,
        projected_horizon_micros -> BigInt,
        horizon_spent_micros -> BigInt,
        computed_at -> Timestamp,
    }
}

diesel::table! {
    burn_cursors (account_id) {
        account_id -> BigInt,
        last_day -> Date,
        seq_seen -> BigInt,
    }
}

diesel::table! {
    burn_runs (id) {
        id -> BigInt,
        as_of -> Timestamp,
        journal_watermark -> BigInt,
        days_written -> BigInt,
        accounts -> BigInt,
        started_at -> Timestamp,
        finished_at -> Timestamp,
    }
}

diesel::table! {
    alerts (id) {
        id -> BigInt,
        dedup_key -> Text,
        kind -> Text,
        severity -> Text,
        subject_kind -> Text,
        subject -> Text,
        account_id -> Nullable<BigInt>,
        grant_id -> Nullable<BigInt>,
        message -> Text,
        value -> Text,
        threshold -> Text,
        raised_at -> Timestamp,
        last_seen_at -> Timestamp,
        resolved_at -> Nullable<Timestamp>,
        acknowledged_at -> Nullable<Timestamp>,
        acknowledged_by -> Nullable<Text>,
        ack_notes -> Text,
        notified_at -> Nullable<Timestamp>,
        notify_attempts -> BigInt,
        notify_error -> Text,
        recorded_at -> Timestamp,
    }
}

diesel::table! {
    checks (id) {
        id -> BigInt,
        request_id -> Nullable<Text>,
        request_digest -> Text,
        account -> Text,
        partition -> Text,
        cluster -> Nullable<Text>,
        user_name -> Nullable<Text>,
        job_id -> Nullable<Text>,
        allowed -> Bool,
        reason -> Text,
        hold_id -> Nullable<BigInt>,
        replaced_hold_id -> Nullable<BigInt>,
        method -> Text,
        plan_id -> Nullable<Text>,
        tasks -> BigInt,
        base_task_micros -> BigInt,
        estimate_micros -> BigInt,
        factor -> Nullable<Text>,
        seconds -> BigInt,
        response -> Text,
        created_at -> Timestamp,
    }
}

diesel::joinable!(account_partitions -> accounts (account_id));
diesel::joinable!(holds -> accounts (account_id));
diesel::joinable!(journal -> accounts (account_id));
diesel::joinable!(journal -> holds (hold_id));
diesel::joinable!(account_changes -> accounts (account_id));
diesel::joinable!(allocation_schedules -> accounts (account_id));
diesel::joinable!(allocation_periods -> allocation_schedules (schedule_id));
diesel::joinable!(allocation_pauses -> allocation_schedules (schedule_id));
diesel::joinable!(grant_periods -> grants (grant_id));
diesel::joinable!(grant_links -> grants (grant_id));
diesel::joinable!(grant_links -> accounts (account_id));
diesel::joinable!(grant_period_accounts -> accounts (account_id));
diesel::joinable!(grant_changes -> grants (grant_id));
diesel::joinable!(burn_snapshots -> accounts (account_id));

diesel::allow_tables_to_appear_in_same_query!(
    accounts,
    account_partitions,
    holds,
    journal,
    account_changes,
    spool_files,
    cost_records,
    job_end_records,
    plans,
    allocation_schedules,
    allocation_periods,
    allocation_pauses,
    grants,
    grant_periods,
    grant_links,
    grant_period_accounts,
    grant_changes,
    burn_snapshots,
    burn_cursors,
    burn_runs,
    alerts,
    checks
);
