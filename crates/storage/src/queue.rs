//! The queue runs wait in when the grid is full: a run (foreground or a
//! job) takes a [`Turn`] before it asks for an environment, and holds it
//! until its environment is gone. Turns are handed out while the grid has
//! room (the free slots [`crate::Cpus::room`] reports, less the turns whose
//! spawn has not placed yet), fairly between users (round robin over the
//! users waiting) and first come first served within a user, and never to a
//! user who already holds [`MAX_RUNNING`].
//!
//! Waiters look again whenever a turn ends and every [`LOOK_EVERY`] besides,
//! since room also frees where the queue cannot see it (a spawn ended by
//! `boom`, a cpu node that links).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// Runs one user may have started at once; the rest of theirs wait.
pub const MAX_RUNNING: usize = 8;
/// How often a waiter looks for room that freed unseen.
const LOOK_EVERY: Duration = Duration::from_millis(200);

type Room = Box<dyn Fn() -> usize + Send + Sync>;

pub struct Queue {
    room: Room,
    state: Mutex<State>,
    /// Told when turns are handed out or given back.
    changed: Notify,
}

#[derive(Default)]
struct State {
    /// Each waiting user's tickets, oldest first.
    waiting: HashMap<String, VecDeque<u64>>,
    /// Users with tickets waiting, in the order their next turn comes.
    order: VecDeque<String>,
    /// Tickets given a turn that their waiter has not taken yet.
    granted: HashSet<u64>,
    /// Turns held per user.
    held: HashMap<String, usize>,
    /// Turns whose spawn has not placed yet (the room does not show them).
    starting: usize,
    next: u64,
}

impl Queue {
    /// A queue over the room `room` reports.
    pub fn new(room: impl Fn() -> usize + Send + Sync + 'static) -> Arc<Queue> {
        Arc::new(Queue {
            room: Box::new(room),
            state: Mutex::default(),
            changed: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for `user`'s turn; dropping the future leaves the queue.
    pub async fn turn(self: &Arc<Self>, user: &str) -> Turn {
        self.line_up(user).turn().await
    }

    /// Puts `user` in line now (their place is kept in the order they
    /// lined up, whenever the waiting starts); dropping the ticket leaves.
    pub fn line_up(self: &Arc<Self>, user: &str) -> Ticket {
        let mut st = self.state();
        st.next += 1;
        let id = st.next;
        let queue = st.waiting.entry(user.to_string()).or_default();
        queue.push_back(id);
        if queue.len() == 1 {
            st.order.push_back(user.to_string());
        }
        Ticket {
            queue: self.clone(),
            user: user.to_string(),
            id,
            taken: false,
        }
    }

    /// Hands turns to the waiters next in line while there is room.
    fn hand_out(&self) {
        let room = (self.room)();
        let mut handed = false;
        {
            let mut st = self.state();
            let mut free = room.saturating_sub(st.starting);
            while free > 0 {
                let Some(user) = next_user(&mut st) else {
                    break;
                };
                let queue = st.waiting.get_mut(&user).expect("a waiting user");
                let id = queue.pop_front().expect("a waiting user has a ticket");
                if queue.is_empty() {
                    st.waiting.remove(&user);
                } else {
                    st.order.push_back(user.clone());
                }
                st.granted.insert(id);
                *st.held.entry(user).or_default() += 1;
                st.starting += 1;
                free -= 1;
                handed = true;
            }
        }
        if handed {
            self.changed.notify_waiters();
        }
    }

    /// Tickets waiting, and turns held (what the tests look at; nothing
    /// shows them yet).
    #[cfg(test)]
    fn figures(&self) -> (usize, usize) {
        let st = self.state();
        (
            st.waiting.values().map(VecDeque::len).sum(),
            st.held.values().sum(),
        )
    }

    /// A turn handed back (its run ended, or its waiter left before
    /// taking it).
    fn give_back(&self, user: &str, placed: bool) {
        {
            let mut st = self.state();
            if let Some(n) = st.held.get_mut(user) {
                *n -= 1;
                if *n == 0 {
                    st.held.remove(user);
                }
            }
            if !placed {
                st.starting -= 1;
            }
        }
        self.hand_out();
        self.changed.notify_waiters();
    }
}

/// Takes the next user in round-robin order who may start another run,
/// out of the order (the caller puts them back if they still wait).
fn next_user(st: &mut State) -> Option<String> {
    for _ in 0..st.order.len() {
        let user = st.order.pop_front()?;
        if st.held.get(&user).copied().unwrap_or(0) < MAX_RUNNING {
            return Some(user);
        }
        st.order.push_back(user);
    }
    None
}

/// A place in the queue, until it becomes a [`Turn`].
pub struct Ticket {
    queue: Arc<Queue>,
    user: String,
    id: u64,
    taken: bool,
}

impl Ticket {
    /// Waits for this place's turn.
    pub async fn turn(mut self) -> Turn {
        let queue = self.queue.clone();
        loop {
            let changed = queue.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            queue.hand_out();
            if queue.state().granted.remove(&self.id) {
                self.taken = true;
                return Turn {
                    queue: queue.clone(),
                    user: self.user.clone(),
                    placed: false,
                };
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let granted = {
            let mut st = self.queue.state();
            let granted = st.granted.remove(&self.id);
            if !granted && let Some(queue) = st.waiting.get_mut(&self.user) {
                queue.retain(|&t| t != self.id);
                if queue.is_empty() {
                    st.waiting.remove(&self.user);
                    st.order.retain(|u| *u != self.user);
                }
            }
            granted
        };
        if granted {
            self.queue.give_back(&self.user, false);
        }
    }
}

/// A run's right to an environment: held from before its spawn until its
/// environment is gone.
pub struct Turn {
    queue: Arc<Queue>,
    user: String,
    placed: bool,
}

impl Turn {
    /// The spawn answered (placed or refused): the room now shows it.
    pub fn placed(&mut self) {
        if !self.placed {
            self.placed = true;
            self.queue.state().starting -= 1;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.queue.give_back(&self.user, self.placed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Turns come fairly between users (alice queued 3 before bob's 1:
    /// bob's comes second), first come first served within a user.
    #[tokio::test]
    async fn turns_alternate_between_users_and_keep_each_users_order() {
        // Slots made so far, and slots taken by placed turns.
        let (slots, used) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let queue = Queue::new({
            let (slots, used) = (slots.clone(), used.clone());
            move || slots.load(Ordering::SeqCst) - used.load(Ordering::SeqCst)
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for (user, n) in [("alice", 1), ("alice", 2), ("alice", 3), ("bob", 1)] {
            let (q, tx, used) = (queue.clone(), tx.clone(), used.clone());
            waiters.push(tokio::spawn(async move {
                let mut turn = q.turn(user).await;
                used.fetch_add(1, Ordering::SeqCst);
                turn.placed();
                tx.send(format!("{user}{n}")).unwrap();
                // Holds its slot until the test ends.
                std::future::pending::<()>().await;
                drop(turn);
            }));
            // Each in line before the next.
            while queue.figures().0 < waiters.len() {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(queue.figures(), (4, 0));
        let mut order = Vec::new();
        for held in 1..=4 {
            slots.fetch_add(1, Ordering::SeqCst);
            order.push(rx.recv().await.unwrap());
            assert_eq!(queue.figures(), (4 - held, held));
        }
        assert_eq!(order, ["alice1", "bob1", "alice2", "alice3"]);
        for w in waiters {
            w.abort();
        }
    }

    /// A user holding MAX_RUNNING turns waits while others go ahead; a
    /// waiter that leaves takes its place with it.
    #[tokio::test]
    async fn a_user_at_their_limit_waits_and_leaving_gives_the_place_up() {
        let queue = Queue::new(|| 100);
        let mut alices = Vec::new();
        for _ in 0..MAX_RUNNING {
            let mut t = queue.turn("alice").await;
            t.placed();
            alices.push(t);
        }
        let waiting = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.turn("alice").await.placed })
        };
        let bob = tokio::time::timeout(Duration::from_secs(5), queue.turn("bob")).await;
        assert!(bob.is_ok(), "bob waited behind alice's limit");
        assert!(!waiting.is_finished());
        alices.pop();
        let alice = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(alice.is_ok(), "alice's next did not start when one ended");

        // A waiter that leaves: nothing held, nothing waiting.
        let full = Queue::new(|| 0);
        let gone = tokio::time::timeout(Duration::from_millis(50), full.turn("carol")).await;
        assert!(gone.is_err());
        assert_eq!(full.figures(), (0, 0));
    }
}
