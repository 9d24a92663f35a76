//! Statements of fixed text whose prepared statement diesel keeps.
//!
//! diesel never caches the prepared statement of an `update(…).set(…)` or of a `sql_query`:
//! a changeset may skip `None` fields, so its SQL can vary, and raw SQL is opaque to it. On the
//! hot paths (every charge updates an account, a partition and a hold) preparing those
//! statements again each time cost more than running them. A [`Fixed`] statement is text in
//! pieces with typed binds between them; its SQL never varies, so it is safe to cache, and the
//! backend's own placeholders (`?` or `$n`) are filled in by diesel.

use std::marker::PhantomData;

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::HasSqlType;
use diesel::{QueryResult, RunQueryDsl};

/// One bound value of SQL type `ST`.
pub(crate) struct Bind<ST, V>(V, PhantomData<ST>);

/// A value to bind as SQL type `ST`.
pub(crate) fn bind<ST, V>(value: V) -> Bind<ST, V> {
    Bind(value, PhantomData)
}

/// A tuple of [`Bind`]s that pushes itself between the pieces of a statement's text.
pub(crate) trait Binds<DB: Backend> {
    /// How many values.
    const LEN: usize;
    /// Pushes `pieces[0]`, the first value, `pieces[1]`, … and the last piece.
    fn walk<'b>(
        &'b self,
        pieces: &[&'static str],
        out: &mut AstPass<'_, 'b, DB>,
    ) -> QueryResult<()>;
}

macro_rules! binds_for_tuple {
    ($len:expr; $($i:tt: $S:ident $V:ident),+) => {
        impl<DB: Backend, $($S, $V),+> Binds<DB> for ($(Bind<$S, $V>,)+)
        where
            $(DB: HasSqlType<$S>, $V: ToSql<$S, DB>,)+
        {
            const LEN: usize = $len;
            fn walk<'b>(
                &'b self,
                pieces: &[&'static str],
                out: &mut AstPass<'_, 'b, DB>,
            ) -> QueryResult<()> {
                $(
                    out.push_sql(pieces[$i]);
                    out.push_bind_param::<$S, $V>(&self.$i.0)?;
                )+
                out.push_sql(pieces[$len]);
                Ok(())
            }
        }
    };
}

binds_for_tuple!(1; 0: S0 V0);
binds_for_tuple!(2; 0: S0 V0, 1: S1 V1);
binds_for_tuple!(3; 0: S0 V0, 1: S1 V1, 2: S2 V2);
binds_for_tuple!(4; 0: S0 V0, 1: S1 V1, 2: S2 V2, 3: S3 V3);
binds_for_tuple!(5; 0: S0 V0, 1: S1 V1, 2: S2 V2, 3: S3 V3, 4: S4 V4);
binds_for_tuple!(6; 0: S0 V0, 1: S1 V1, 2: S2 V2, 3: S3 V3, 4: S4 V4, 5: S5 V5);
binds_for_tuple!(7; 0: S0 V0, 1: S1 V1, 2: S2 V2, 3: S3 V3, 4: S4 V4, 5: S5 V5, 6: S6 V6);
binds_for_tuple!(8; 0: S0 V0, 1: S1 V1, 2: S2 V2, 3: S3 V3, 4: S4 V4, 5: S5 V5, 6: S6 V6, 7: S7 V7);
binds_for_tuple!(9; 0: S0 V0, 1: S1 V1, 2: S2 V2, 3: S3 V3, 4: S4 V4, 5: S5 V5, 6: S6 V6, 7: S7 V7, 8: S8 V8);
binds_for_tuple!(10; 0: S0 V0, 1: S1 V1, 2: S2 V2, 3: S3 V3, 4: S4 V4, 5: S5 V5, 6: S6 V6, 7: S7 V7, 8: S8 V8, 9: S9 V9);
binds_for_tuple!(11; 0: S0 V0, 1: S1 V1, 2: S2 V2, 3: S3 V3, 4: S4 V4, 5: S5 V5, 6: S6 V6, 7: S7 V7, 8: S8 V8, 9: S9 V9, 10: S10 V10);
binds_for_tuple!(12; 0: S0 V0, 1: S1 V1, 2: S2 V2, 3: S3 V3, 4: S4 V4, 5: S5 V5, 6: S6 V6, 7: S7 V7, 8: S8 V8, 9: S9 V9, 10: S10 V10, 11: S11 V11);
binds_for_tuple!(13; 0: S0 V0, 1: S1 V1, 2: S2 V2, 3: S3 V3, 4: S4 V4, 5: S5 V5, 6: S6 V6, 7: S7 V7, 8: S8 V8, 9: S9 V9, 10: S10 V10, 11: S11 V11, 12: S12 V12);
binds_for_tuple!(14; 0: S0 V0, 1: S1 V1, 2: S2 V2, 3: S3 V3, 4: S4 V4, 5: S5 V5, 6: S6 V6, 7: S7 V7, 8: S8 V8, 9: S9 V9, 10: S10 V10, 11: S11 V11, 12: S12 V12, 13: S13 V13);
binds_for_tuple!(15; 0: S0 V0, 1: S1 V1, 2: S2 V2, 3: S3 V3, 4: S4 V4, 5: S5 V5, 6: S6 V6, 7: S7 V7, 8: S8 V8, 9: S9 V9, 10: S10 V10, 11: S11 V11, 12: S12 V12, 13: S13 V13, 14: S14 V14);
binds_for_tuple!(16; 0: S0 V0, 1: S1 V1, 2: S2 V2, 3: S3 V3, 4: S4 V4, 5: S5 V5, 6: S6 V6, 7: S7 V7, 8: S8 V8, 9: S9 V9, 10: S10 V10, 11: S11 V11, 12: S12 V12, 13: S13 V13, 14: S14 V14, 15: S15 V15);
binds_for_tuple!(17; 0: S0 V0, 1: S1 V1, 2: S2 V2, 3: S3 V3, 4: S4 V4, 5: S5 V5, 6: S6 V6, 7: S7 V7, 8: S8 V8, 9: S9 V9, 10: S10 V10, 11: S11 V11, 12: S12 V12, 13: S13 V13, 14: S14 V14, 15: S15 V15, 16: S16 V16);
binds_for_tuple!(18; 0: S0 V0, 1: S1 V1, 2: S2 V2, 3: S3 V3, 4: S4 V4, 5: S5 V5, 6: S6 V6, 7: S7 V7, 8: S8 V8, 9: S9 V9, 10: S10 V10, 11: S11 V11, 12: S12 V12, 13: S13 V13, 14: S14 V14, 15: S15 V15, 16: S16 V16, 17: S17 V17);
binds_for_tuple!(19; 0: S0 V0, 1: S1 V1, 2: S2 V2, 3: S3 V3, 4: S4 V4, 5: S5 V5, 6: S6 V6, 7: S7 V7, 8: S8 V8, 9: S9 V9, 10: S10 V10, 11: S11 V11, 12: S12 V12, 13: S13 V13, 14: S14 V14, 15: S15 V15, 16: S16 V16, 17: S17 V17, 18: S18 V18);
binds_for_tuple!(20; 0: S0 V0, 1: S1 V1, 2: S2 V2, 3: S3 V3, 4: S4 V4, 5: S5 V5, 6: S6 V6, 7: S7 V7, 8: S8 V8, 9: S9 V9, 10: S10 V10, 11: S11 V11, 12: S12 V12, 13: S13 V13, 14: S14 V14, 15: S15 V15, 16: S16 V16, 17: S17 V17, 18: S18 V18, 19: S19 V19);
binds_for_tuple!(21; 0: S0 V0, 1: S1 V1, 2: S2 V2, 3: S3 V3, 4: S4 V4, 5: S5 V5, 6: S6 V6, 7: S7 V7, 8: S8 V8, 9: S9 V9, 10: S10 V10, 11: S11 V11, 12: S12 V12, 13: S13 V13, 14: S14 V14, 15: S15 V15, 16: S16 V16, 17: S17 V17, 18: S18 V18, 19: S19 V19, 20: S20 V20);

/// A statement of fixed text: `pieces` around the values of `binds` (one more piece than
/// values).
pub(crate) struct Fixed<B> {
    pieces: &'static [&'static str],
    binds: B,
}

/// Builds a [`Fixed`] statement; `pieces` must have one more element than `binds`.
pub(crate) fn fixed<B>(pieces: &'static [&'static str], binds: B) -> Fixed<B> {
    Fixed { pieces, binds }
}

impl<DB: Backend, B: Binds<DB>> QueryFragment<DB> for Fixed<B> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        // A mismatch is a programming error in the statement's definition.
        assert_eq!(
            self.pieces.len(),
            B::LEN + 1,
            "a fixed statement needs one more piece of text than values: {:?}",
            self.pieces
        );
        self.binds.walk(self.pieces, &mut out)
    }
}

// Without a static id the statement cache keys by the SQL text, which never varies here; the
// default `is_safe_to_cache_prepared` (true) lets it keep the prepared statement.
impl<B> QueryId for Fixed<B> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B, Conn> RunQueryDsl<Conn> for Fixed<B> {}

/// A [`Fixed`] statement that returns rows of SQL type `ST` (a `SELECT`, or a write with
/// `RETURNING`).
pub(crate) struct FixedQuery<B, ST> {
    inner: Fixed<B>,
    rows: PhantomData<ST>,
}

/// Builds a [`FixedQuery`]; `pieces` must have one more element than `binds`.
pub(crate) fn fixed_query<ST, B>(pieces: &'static [&'static str], binds: B) -> FixedQuery<B, ST> {
    FixedQuery {
        inner: fixed(pieces, binds),
        rows: PhantomData,
    }
}

impl<DB: Backend, B: Binds<DB>, ST> QueryFragment<DB> for FixedQuery<B, ST> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.inner.walk_ast(out)
    }
}

impl<B, ST> QueryId for FixedQuery<B, ST> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B, ST> diesel::query_builder::Query for FixedQuery<B, ST> {
    type SqlType = ST;
}

impl<B, ST, Conn> RunQueryDsl<Conn> for FixedQuery<B, ST> {}
