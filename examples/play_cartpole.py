"""Play CartPole inside a world model (VAE-Seq's "play" experiment with bbvae).

A VRNN (or SRNN) learns CartPole-v1 from real episodes (states, rewards and termination as the
observation, actions as side inputs); a policy learns only from rollouts the model imagines, by
differentiating through the model with Gumbel-softmax actions (``--estimator pathwise``) or by the
score-function estimator with a baseline (``--estimator score``); the two alternate with collecting
real episodes (Dyna). At the end: the policy's mean return on real episodes, and the world model's
held-out log-likelihood and open-loop prediction error against the simulator.

    pip install 'bbvae[play]'
    python examples/play_cartpole.py                       # about 5 CPU-minutes
    python examples/play_cartpole.py --estimator score --model srnn --loss fivo

The benchmark with 3 seeds and the REINFORCE comparison is benchmarks/bench_play.py.
"""

from __future__ import annotations

import argparse

import torch

from bbvae.play import DynaConfig, mean_return, open_loop_error, run_dyna, run_episodes


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Train a CartPole agent inside a bbvae world model.")
    parser.add_argument("--estimator", choices=("pathwise", "score"), default="pathwise")
    parser.add_argument("--model", choices=("vrnn", "srnn"), default="vrnn")
    parser.add_argument("--loss", choices=("elbo", "iwae", "fivo"), default="elbo")
    parser.add_argument("--samples", type=int, default=1, help="samples / particles of the model's loss")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--steps-per-iteration", type=int, default=1000, help="real steps per iteration")
    parser.add_argument("--model-steps", type=int, default=150, help="model refit steps per iteration")
    parser.add_argument("--policy-updates", type=int, default=30, help="imagined updates per iteration")
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    config = DynaConfig(
        seed=args.seed,
        estimator=args.estimator,
        model=args.model,
        model_loss=args.loss,
        model_samples=args.samples,
        n_iterations=args.iterations,
        initial_steps=args.steps_per_iteration,
        steps_per_iteration=args.steps_per_iteration,
        model_steps_first=max(args.model_steps, 1) * 8 // 3,
        model_steps=args.model_steps,
        policy_updates=args.policy_updates,
    )
    result = run_dyna(
        config,
        log=lambda r: print(
            f"iteration {r['iteration']}: {r['real_steps']} real steps, return {r['eval_return']:.1f} "
            f"(imagined {r['imagined_return']:.1f})"
        ),
    )
    episodes = run_episodes(result.policy.act, args.eval_episodes, seed=10**6 + args.seed)
    held_out = run_episodes(result.policy.act, max(2, args.eval_episodes // 5), seed=2 * 10**6 + args.seed)
    steps = sum(len(e) for e in result.episodes)
    final = mean_return(episodes)
    print(f"mean return over {len(episodes)} real episodes: {final:.1f} after {steps} real training steps")
    loglik = result.world.log_likelihood(held_out, n_samples=8)
    bounds = ", ".join(f"{k.upper()} {v:.2f}" for k, v in loglik.items())
    print(f"world model, held-out nats per step: {bounds}")
    horizons = tuple(h for h in (10, 25, 50) if h <= max(len(e) for e in held_out)) or (1,)
    errors = open_loop_error(result.world, held_out, horizons, n_samples=8)
    for h, err in errors.items():
        print(f"open-loop error after {h} steps: normalised RMSE {err['nrmse']:.3f}, per dim {err['rmse']}")
    return {
        "history": result.history,
        "real_steps": steps,
        "mean_return": final,
        "loglik": loglik,
        "open_loop": errors,
    }


if __name__ == "__main__":
    main()
