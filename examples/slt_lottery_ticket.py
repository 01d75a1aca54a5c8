"""Find a strong lottery ticket in a partially frozen random network, ship it as a seed plus bits.

    python examples/slt_lottery_ticket.py            # Fashion-MNIST (apt-get install dataset-fashion-mnist)
    python examples/slt_lottery_ticket.py --fast     # scikit-learn digits, a few seconds

A Conv6-style network gets random weights from a seed; 30% of them are pruned and 20% locked at random,
and edge-popup learns which of the remaining free weights to keep so that 60% of all weights are off
(arXiv 2402.14029). Only the scores train. The ticket is saved as the config, one bit per free weight and
the batch-norm statistics, reloaded on a fresh network, and checked to give the same logits.
"""

import argparse
import tempfile

import torch

from hf_coop.slt import FrozenSLTConfig, FrozenSLTModel, apply_frozen_slt
from hf_coop.slt.tasks import ConvNet, accuracy, digits_data, fashion_mnist_data, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="digits instead of Fashion-MNIST, fewer epochs")
    parser.add_argument(
        "--output", default=None, help="where to save the ticket (default: a temporary folder)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.fast:
        train_x, train_y, test_x, test_y = digits_data()
        epochs, width = 5, 8
    else:
        train_x, train_y, test_x, test_y = fashion_mnist_data(train_limit=10_000, test_limit=2_000)
        epochs, width = 3, 16
    image_size = train_x.shape[-1]

    def build() -> ConvNet:
        return ConvNet(image_size=image_size, width=width)

    config = FrozenSLTConfig(sparsity=0.6, pruned_ratio=0.3, locked_ratio=0.2, seed=42)
    ticket = apply_frozen_slt(build(), config)
    train_classifier(ticket, ticket.optimizer_param_groups(), train_x, train_y, epochs=epochs, lr=0.1)
    print(f"test accuracy of the ticket: {accuracy(ticket, test_x, test_y):.4f}")

    output = args.output or tempfile.mkdtemp(prefix="slt_ticket_")
    report = ticket.save_pretrained(output)
    print(
        f"saved to {output}: {report['compact_bytes']} bytes vs "
        f"{report['dense_fp32_bytes']} bytes dense fp32 "
        f"({report['compression']:.1f}x smaller), sparsity {report['sparsity']:.4f}"
    )

    reloaded = FrozenSLTModel.from_pretrained(build(), output).eval()
    same = torch.equal(reloaded(test_x[:64]), ticket.eval()(test_x[:64]))
    print(f"reloaded ticket gives identical logits: {same}")
    dense = reloaded.merge_and_unload()
    print(f"merged dense network accuracy: {accuracy(dense, test_x, test_y):.4f}")


if __name__ == "__main__":
    main()
