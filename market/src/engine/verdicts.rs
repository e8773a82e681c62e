//! What the node accepts as a verdict. A verdict answers one challenge: the one derived for its
//! verifier from the commitment id and the beacon, sized by the task's audit policy. Anything
//! else a verifier signs (a pass that skips part of its sample, a failure naming a segment it
//! was never asked to check) is a provable lie: anyone can re-derive the challenge from the
//! ledger export and see it.

use market_protocol::{
    message_id, AccountId, Challenge, ChallengeId, CommitmentId, Signed, Verdict, VerdictOutcome,
};

/// Why a verdict is not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerdictDefect {
    /// Not signed by the verifier that was asked: it proves nothing about anyone.
    #[error("not signed by the verifier asked: {0}")]
    Unattributable(String),
    /// Signed by the verifier, but it does not answer its challenge: the verifier's own
    /// evidence against itself.
    #[error("{0}")]
    Lie(String),
}

/// Checks that `verdict`, from `verifier`, answers `challenge` on `commitment`: strict signature
/// by `verifier`; the commitment and challenge ids; a pass lists exactly the sampled segments in
/// challenge order; a failure names a sampled segment after a prefix of the sample that passed
/// (or segment 0 with nothing checked, for a failure of the commitment as a whole: checks 2-4).
pub fn check_verdict(
    verdict: &Signed<Verdict>,
    verifier: &AccountId,
    commitment: &CommitmentId,
    challenge: &Challenge,
) -> Result<(), VerdictDefect> {
    let body = verdict
        .verify()
        .map_err(|e| VerdictDefect::Unattributable(e.to_string()))?;
    if body.verifier != *verifier {
        return Err(VerdictDefect::Unattributable(format!(
            "signed by {}, asked {verifier}",
            body.verifier
        )));
    }
    let lie = |s: String| Err(VerdictDefect::Lie(s));
    if body.commitment_id != *commitment {
        return lie(format!(
            "the verdict is on commitment {}, not {commitment}",
            body.commitment_id
        ));
    }
    let expected = message_id(challenge).map_err(|e| VerdictDefect::Lie(e.to_string()))?;
    if body.challenge_id != ChallengeId(expected) {
        return lie("the verdict does not answer the verifier's challenge".into());
    }
    let checked: Vec<u32> = body.checked.iter().map(|c| c.segment).collect();
    let sampled = &challenge.sampled;
    match &body.outcome {
        VerdictOutcome::Pass => {
            if checked != *sampled {
                return lie(format!(
                    "a pass must list the sampled segments {sampled:?}, it lists {checked:?}"
                ));
            }
        }
        VerdictOutcome::Fail { segment, .. } => {
            let whole = checked.is_empty() && *segment == 0;
            let position = sampled.iter().position(|s| s == segment);
            // The segments before it passed, and it failed either before re-execution (not
            // listed) or in it (listed last).
            let in_sample = position.is_some_and(|p| {
                (checked.len() == p || checked.len() == p + 1)
                    && checked[..] == sampled[..checked.len()]
            });
            if !whole && !in_sample {
                return lie(format!(
                    "the failure names segment {segment}, which its challenge {sampled:?} does not reach after checking {checked:?}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use market_protocol::{
        Beacon, FailureReason, Hash, Identity, SegmentCheck, StateHash, Version,
    };

    fn setup() -> (Identity, CommitmentId, Challenge) {
        let v = Identity::from_test_label("verifier");
        let c = CommitmentId(Hash::of(b"c"));
        let ch = Challenge::derive(v.account(), c, Beacon(Hash::of(b"b")), 40, 4).unwrap();
        (v, c, ch)
    }

    fn verdict(
        v: &Identity,
        c: CommitmentId,
        ch: &Challenge,
        checked: &[u32],
        outcome: VerdictOutcome,
    ) -> Signed<Verdict> {
        let h = StateHash(Hash::of(b"end"));
        Signed::sign(
            Verdict {
                version: Version::CURRENT,
                verifier: v.account(),
                commitment_id: c,
                challenge_id: ChallengeId(message_id(ch).unwrap()),
                checked: checked
                    .iter()
                    .map(|&segment| SegmentCheck {
                        segment,
                        expected: h,
                        actual: Some(h),
                    })
                    .collect(),
                outcome,
                compute_share_ppm: 0,
            },
            v,
        )
        .unwrap()
    }

    fn fail(segment: u32) -> VerdictOutcome {
        VerdictOutcome::Fail {
            segment,
            step: None,
            reason: FailureReason::Withheld,
            detail: String::new(),
        }
    }

    /// Attack 3 (a lying verifier): a failure naming a segment outside the verifier's challenge,
    /// or past the last segment, was kept and refereed as "withheld". Now it is refused as the
    /// verifier's own lie before any referee runs.
    #[test]
    fn attack_failure_outside_the_challenge_is_a_lie() {
        let (v, c, ch) = setup();
        let outside = (0..1000)
            .find(|s| !ch.sampled.contains(s) && *s != 0)
            .unwrap();
        for seg in [outside, 40, 1_000_000] {
            let bad = verdict(&v, c, &ch, &[], fail(seg));
            assert!(matches!(
                check_verdict(&bad, &v.account(), &c, &ch),
                Err(VerdictDefect::Lie(_))
            ));
        }
        // Honest shapes: a failure at the first sampled segment, at the third after two
        // passed, and of the commitment as a whole (segment 0, nothing checked).
        let s = &ch.sampled;
        for (checked, seg) in [
            (vec![], s[0]),
            (vec![s[0], s[1]], s[2]),
            (vec![s[0], s[1], s[2]], s[2]),
            (vec![], 0),
        ] {
            let ok = verdict(&v, c, &ch, &checked, fail(seg));
            assert_eq!(check_verdict(&ok, &v.account(), &c, &ch), Ok(()));
        }
        // A failure after a checked list that is not the sample's prefix.
        let skipped = verdict(&v, c, &ch, &[s[1]], fail(s[2]));
        assert!(check_verdict(&skipped, &v.account(), &c, &ch).is_err());
    }

    #[test]
    fn a_pass_must_cover_exactly_its_own_sample() {
        let (v, c, ch) = setup();
        let good = verdict(&v, c, &ch, &ch.sampled, VerdictOutcome::Pass);
        assert_eq!(check_verdict(&good, &v.account(), &c, &ch), Ok(()));
        let lazy = verdict(&v, c, &ch, &[], VerdictOutcome::Pass);
        assert!(matches!(
            check_verdict(&lazy, &v.account(), &c, &ch),
            Err(VerdictDefect::Lie(_))
        ));
        // Another verifier's challenge (every verifier has its own sample).
        let other = Identity::from_test_label("other verifier");
        let theirs = Challenge::derive(other.account(), c, ch.beacon, 40, 4).unwrap();
        assert_ne!(theirs.sampled, ch.sampled);
        let borrowed = verdict(&v, c, &theirs, &theirs.sampled, VerdictOutcome::Pass);
        assert!(check_verdict(&borrowed, &v.account(), &c, &ch).is_err());
        // Signed by someone else: not attributable to the verifier asked.
        assert!(matches!(
            check_verdict(&good, &other.account(), &c, &ch),
            Err(VerdictDefect::Unattributable(_))
        ));
    }
}
