//! The judgement a socket passes on a resumed welcome after its node died:
//! with sync durability every acknowledged count is in Redis, and at most the
//! messages still in flight may have landed as well.

/// What a resumed count says about the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Nothing acknowledged was lost; `applied` of the in-flight messages
    /// reached the store before the node died.
    Continues { applied: u64 },
    /// Counts the client had seen acknowledged are gone.
    Lost { by: u64 },
    /// The count is ahead of everything the client ever sent.
    Ahead { by: u64 },
}

/// `last_acked <= count <= last_acked + unacked` is the only honest outcome.
pub fn resume(last_acked: u64, unacked: u64, count: u64) -> Resume {
    if count < last_acked {
        Resume::Lost {
            by: last_acked - count,
        }
    } else if count - last_acked > unacked {
        Resume::Ahead {
            by: count - last_acked - unacked,
        }
    } else {
        Resume::Continues {
            applied: count - last_acked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_last_acked_to_last_acked_plus_unacked() {
        assert_eq!(resume(10, 0, 10), Resume::Continues { applied: 0 });
        assert_eq!(resume(10, 1, 10), Resume::Continues { applied: 0 });
        assert_eq!(resume(10, 1, 11), Resume::Continues { applied: 1 });
        assert_eq!(resume(10, 0, 11), Resume::Ahead { by: 1 });
        assert_eq!(resume(10, 1, 13), Resume::Ahead { by: 2 });
        assert_eq!(resume(10, 1, 9), Resume::Lost { by: 1 });
        assert_eq!(resume(10, 0, 0), Resume::Lost { by: 10 });
        assert_eq!(resume(0, 0, 0), Resume::Continues { applied: 0 });
        assert_eq!(resume(0, 1, 1), Resume::Continues { applied: 1 });
    }
}
