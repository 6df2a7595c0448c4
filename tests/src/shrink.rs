//! Shrinking a failing sequence of actions to a small one that still fails the same way:
//! remove chunks (halves, quarters, ... single actions), keep every removal after which the
//! candidate, re-run from scratch by the caller, still fails; bounded by a deadline.

use std::time::Instant;

/// What the shrinker did.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Candidates run.
    pub runs: usize,
    /// The deadline stopped it before a fixed point.
    pub timed_out: bool,
}

/// Shrinks `seq`, which fails, to a subsequence for which `fails` is still true. `fails` runs a
/// candidate from scratch and says whether it fails *in the same way* (the caller decides what
/// that means). Stops at `deadline` with the smallest failing sequence found so far.
pub fn shrink<T: Clone>(
    seq: Vec<T>,
    deadline: Instant,
    mut fails: impl FnMut(&[T]) -> bool,
) -> (Vec<T>, Stats) {
    let mut best = seq;
    let mut stats = Stats::default();
    let mut chunk = (best.len() / 2).max(1);
    loop {
        let mut removed_any = false;
        let mut i = 0;
        while i < best.len() {
            if Instant::now() >= deadline {
                stats.timed_out = true;
                return (best, stats);
            }
            let end = (i + chunk).min(best.len());
            let mut cand = best[..i].to_vec();
            cand.extend_from_slice(&best[end..]);
            stats.runs += 1;
            if !cand.is_empty() && fails(&cand) {
                best = cand;
                removed_any = true;
            } else {
                i += chunk;
            }
        }
        if chunk == 1 {
            if !removed_any {
                return (best, stats);
            }
        } else {
            chunk = (chunk / 2).max(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn finds_the_two_actions_that_matter() {
        let seq: Vec<u32> = (0..40).collect();
        let far = Instant::now() + Duration::from_secs(60);
        let (min, st) = shrink(seq, far, |c| c.contains(&7) && c.contains(&31));
        assert_eq!(min, [7, 31]);
        assert!(!st.timed_out);
    }

    #[test]
    fn order_dependent_failures_keep_their_order() {
        let seq: Vec<u32> = (0..20).collect();
        let far = Instant::now() + Duration::from_secs(60);
        let (min, _) = shrink(seq, far, |c| {
            let a = c.iter().position(|&x| x == 3);
            let b = c.iter().position(|&x| x == 12);
            matches!((a, b), (Some(a), Some(b)) if a < b)
        });
        assert_eq!(min, [3, 12]);
    }
}
