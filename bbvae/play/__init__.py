"""Play: a world model of a game (a bbvae sequence model) and an agent trained inside it.

After VAE-Seq's "play" experiment: real episodes of a gymnasium environment (CartPole-v1) are
sequences of observations (state, reward, termination) with the actions as side inputs; a VRNN or
SRNN fitted to them with ELBO/IWAE/FIVO by :class:`bbvae.Trainer` is the world model; a policy is
trained only on rollouts imagined by that model, by the score-function estimator with a baseline or
by differentiating through the model with Gumbel-softmax actions; and a Dyna-style loop alternates
real data collection, model refits and imagined training. Needs ``pip install 'bbvae[play]'``
(gymnasium) to make environments.
"""

from bbvae.play.agent import Policy, Rollout, discounted_returns, gumbel_softmax, imagine, policy_loss
from bbvae.play.dyna import DynaConfig, DynaResult, run_dyna, start_states, train_policy
from bbvae.play.env import Episode, make_env, mean_return, random_act, run_episodes
from bbvae.play.metrics import open_loop_error
from bbvae.play.reinforce import ReinforceConfig, ReinforceResult, run_reinforce
from bbvae.play.world_model import ResidualDecoder, TransitionObservation, WorldModel

__all__ = [
    "DynaConfig",
    "DynaResult",
    "Episode",
    "Policy",
    "ReinforceConfig",
    "ReinforceResult",
    "ResidualDecoder",
    "Rollout",
    "TransitionObservation",
    "WorldModel",
    "discounted_returns",
    "gumbel_softmax",
    "imagine",
    "make_env",
    "mean_return",
    "open_loop_error",
    "policy_loss",
    "random_act",
    "run_dyna",
    "run_episodes",
    "run_reinforce",
    "start_states",
    "train_policy",
]
