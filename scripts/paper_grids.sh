#!/usr/bin/env bash
# The papers' claims at the papers' own budgets (issue 17): one resumable grid per paper.
#
#   scripts/paper_grids.sh GRID [GRID ...]      # lab50 iter450 cifar40 cifar40-binact lstm
#   WORKERS=2 scripts/paper_grids.sh lab50      # two single-threaded runs side by side
#
# Each grid is one `onebit compare` (a finished run is never redone: after a kill, the same
# command finishes the grid) writing its record into records/ after every call; a grid of more
# runs than one sitting allows is made by calling it again in the next. Seeds 0 1 2. Data from
# $ONEBIT_DATA (or onebit's usual search). Each grid's config says why its budget is what it is.
set -euo pipefail
cd "$(dirname "$0")/.."
onebit=${ONEBIT:-.venv/bin/onebit}
workers=${WORKERS:-1}
run() {  # config methods record [extra compare arguments...]
    local config=$1 methods=$2 record=$3
    shift 3
    "$onebit" compare "$config" --methods "$methods" --seeds 0 1 2 --workers "$workers" \
        --set train.threads=1 --record "$record" "$@"
}
for grid in "$@"; do
    case $grid in
    lab50)  # LAB's MNIST table: 784-2048x3-10, LAB's recipe, 50 epochs
        run configs/mnist_mlp_lab.toml fp,bc,bwn,lab,pc,bnn+,bnn++,gwt,proxquant \
            records/2026-12-07_mnist_mlp_lab_50ep ;;
    iter450)  # iterative training: MNIST 784-300-100-10, 150 epochs per layer, 450 in all
        run configs/mnist_mlp_iterative_paper.toml \
            fp,iterative-all,iterative,iterative-reverse,iterative-random,iterative-sens-asc,iterative-sens-desc \
            records/2026-12-07_mnist_mlp_iterative_450ep ;;
    cifar40)  # CIFAR-10 ResNet-20, the fast converged recipe, binary weights
        run configs/cifar_resnet20_fast.toml fp,bc,bwn,lab,bnn++,proxquant,gwt \
            records/2026-12-07_cifar_resnet20_fast ;;
    cifar40-binact)  # the same recipe with binary activations: bnn, xnor, and bnn++ with them
        run configs/cifar_resnet20_fast.toml bnn,xnor records/2026-12-07_cifar_resnet20_fast_binact
        run configs/cifar_resnet20_fast.toml bnn++ records/2026-12-07_cifar_resnet20_fast_bnnpp_binact \
            --set method.name=bnn++ --set method.binary_acts=true --out runs/binact ;;
    lstm)  # the character LSTM where fp has converged
        run configs/char_lstm_converged.toml fp,bc,bwn,lab,lab2 records/2026-12-07_char_lstm_converged ;;
    *)
        echo "unknown grid $grid (lab50 iter450 cifar40 cifar40-binact lstm)" >&2
        exit 2 ;;
    esac
done
