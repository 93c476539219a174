"""Default configuration: every field with a one-line comment (``configs/*.py`` start from it).

Run: python main.py --config=configs/default.py --workdir=runs/default
Override any field from the command line, e.g. --config.num_steps=200; a mistyped key is refused.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0                      # one seed for initialisation, data order and phantoms
    c.model = "voxelmorph"          # displacement estimator: "voxelmorph" or "transmorph"
    c.method = "ours"               # "ours": SNR-weighted MSE + beta-NLL variance net; baselines (core.methods.METHODS):
                                    # `mse` (same motion net, weight 1, no variance net), `ncc`, `mi` (motion net
                                    # alone), `nll`, `beta_nll` (joint baselines), `vxm_diff` (probabilistic
                                    # diffeomorphic VoxelMorph: see Displacement uncertainty), `adareg`, `adaframe`
                                    # (residual-adaptive weights, one network), `elastix` (classical B-spline
                                    # registration of each test pair, no network: see the `elastix.*` keys)
    c.num_steps = 30_000            # training steps (paper: 300 epochs of 100 steps)
    c.steps_per_epoch = 100         # an "epoch" = this many random batches drawn with replacement
    c.batch_size = 8                # global batch (pairs per step), split over all devices
    c.steps_per_call = 1            # K iterations per jitted call, data on the devices
                                    # (see Training and Speed); a chunk never crosses a log, validation or checkpoint
                                    # step
    c.steps_per_call_form = "auto"  # the K steps as a "loop" (fori_loop) or "unrolled" (auto: unrolled on CPU)
                                    # `loop`: one program for every chunk length, every K gives bit-identical
                                    # parameters; `unrolled`: K copies of the iteration in one program, compile time
                                    # grows with K, parameters agree with K = 1 to float rounding; `auto` = `unrolled`
                                    # on CPU (where a loop body runs 8-10x slower), `loop` on GPU/TPU
    c.log_every = 50                # terminal progress + metrics.jsonl + TensorBoard every N steps
    c.eval_every = 1_000            # validation Dice every N steps (0 = never during training)
    c.checkpoint_every = 1_000      # orbax checkpoint every N steps (and always at the end)
    c.keep_checkpoints = 3          # how many recent checkpoints to keep
    c.checkpoint_async = "auto"     # write checkpoints in the background while training goes on: "on", "off" or
                                    # "auto" (on a GPU or TPU); never with several processes. The last step's and a
                                    # stopped run's checkpoints are always complete before the run goes on
    c.warm_start = False            # motion-only (w = 1), then variance-only, then alternating
    c.warm_start_epochs = 10        # length of each warm-start phase, in epochs
    c.compute_dtype = "float32"     # network compute dtype: "float32" or "bfloat16" (params, warp, losses stay float32)
                                    # `bfloat16`: convolutions, Dense layers, attention and norms compute in bf16
                                    # (mixed precision); parameters, optimiser states, heads, integration, warp and
                                    # losses stay float32 (see Speed)
    c.remat = "none"                # "blocks": recompute each U-Net level / Swin block in the backward pass
                                    # instead of storing it (`flax.linen.remat`): less memory, more compute; same
                                    # parameters and checkpoints
    c.unet_upsample = "subpixel"    # the VoxelMorph and variance U-Nets' convolution after each upsampling:
                                    # `subpixel` (the exact sub-pixel form: one 2^ndim-tap convolution per
                                    # output phase at the low resolution; faster on XLA:CPU) or `plain` (nearest
                                    # 2x upsample, concatenate the skip, one 3^ndim convolution: the form GPU and
                                    # TPU convolution libraries are built for); same parameters and checkpoints,
                                    # results equal to float rounding (see Speed)

    c.motion = ml_collections.ConfigDict()  # VoxelMorph's network (changed with TransMorph: refused)
    c.motion.enc_features = (16, 32, 32, 32)               # VoxelMorph encoder widths
    c.motion.dec_features = (32, 32, 32, 32, 32, 16, 16)   # VoxelMorph decoder widths
    c.motion.int_steps = 7          # scaling-and-squaring steps (0 = not diffeomorphic)
    c.motion.int_downsize = 2       # the velocity is integrated at 1/int_downsize resolution
    c.motion.bidirectional = False  # also warp ES -> ED with the negated velocity (each weighs 0.5)
                                    # VoxelMorph only; not with `ours`, whose variance net is trained on the moving ->
                                    # fixed direction only (the joint `nll`/`beta_nll` train theirs through both
                                    # directions' loss)
    c.motion.predict_sigma = False  # + a log sigma_z^2 head: z ~ N(mu_z, sigma_z^2 I) sampled in training (Sec. 5.3)
                                    # works with both models; not with `vxm_diff` or `bidirectional`

    c.transmorph = ml_collections.ConfigDict()  # TransMorph's network (changed with VoxelMorph: refused)
    c.transmorph.embed_dim = 96     # Swin embedding width (decoder widths follow it)
    c.transmorph.depths = (2, 2, 4, 2)     # Swin blocks per stage
    c.transmorph.num_heads = (4, 4, 8, 8)  # attention heads per stage
    c.transmorph.window_size = (0,)  # (0,) = the default for the input's ndim: 8x8 (2D), 4x4x4 (3D)
    c.transmorph.drop_path_rate = 0.3  # stochastic depth, linspace(0, rate) over the blocks

    c.variance = ml_collections.ConfigDict()  # the U-Net predicting log sigma^2 of the image noise
    c.variance.enc_features = (16, 32, 32, 32)             # variance U-Net encoder widths
    c.variance.dec_features = (32, 32, 32, 32, 32, 16, 16) # variance U-Net decoder widths

    c.optim = ml_collections.ConfigDict()  # two Adam optimisers, stepped alternately
    c.optim.motion_lr = 1e-4        # Adam learning rate of the displacement estimator
    c.optim.variance_lr = 1e-4      # Adam learning rate of the variance estimator (always constant)
    c.optim.motion_schedule = "auto"  # "constant", "poly" (lr * (1 - epoch/epochs)^0.9) or "auto":
                                      # poly for TransMorph (the reference's), constant for VoxelMorph

    c.loss = ml_collections.ConfigDict()  # the loss terms of every method (see Losses)
    c.loss.gamma = 0.5              # SNR exponent: 0 = plain MSE weight, 1 = full confidence
    c.loss.beta = 0.5               # beta of the beta-NLL variance loss
    c.loss.smooth_weight = 0.01     # lambda of the smoothness regulariser
    c.loss.reg_scale = 1.0          # extra factor on the regulariser (authors' code: int_downsize = 2)
    c.loss.snr_form = "paper"       # "paper" (I_f^2/sigma^2)^gamma or "reference" (I_f/sigma^2)^gamma
    c.loss.minmax_scope = "tensor"  # SNR min/max over "tensor" (masked-out SNR = 0, authors' code) or "mask" only
                                    # (see Losses: the two differ only when a batch has masked-out voxels and no
                                    # masked-in voxel of SNR 0)
    c.loss.use_mask = True          # restrict residuals, log-variance and weights to the foreground
    c.loss.ncc_window = 9           # window of the NCC baseline
    c.loss.mi_bins = 32             # histogram bins of the MI baseline
    c.loss.adareg_c = 5.0           # adareg: regulariser weight exp(-c * |r(x)| * mean|r|) (reference code's 5)
    c.loss.adaframe_sigma = 1.0     # adaframe: data weight exp(-|r(x)| / (sigma * mean|r|)), R weight 1 - that
    c.loss.sigma_z_weight = 1e-3    # alpha of alpha * mean(sigma_z^2 - log sigma_z^2) (motion.predict_sigma)
                                    # (> 0; = ndim * sigma_n^2 for image noise sigma_n of about 0.022)
    c.loss.image_sigma = 0.02       # vxm_diff: image term mean(r^2) / image_sigma^2 (Dalca et al. 2018)
    c.loss.prior_lambda = 10.0      # vxm_diff: lambda of the Laplacian-precision prior in the KL

    c.data = ml_collections.ConfigDict()  # what is trained and evaluated on, and how it is cut
    c.data.dataset = "acdc"         # "acdc", "camus", "echo3d": phantom kind; with a root, breaks layout ties
    c.data.root = config_dict.placeholder(str)  # dataset folder; None = built-in synthetic phantoms
                                                # the layout decides the loader: `training/` = ACDC, `database_nifti/`
                                                # = CAMUS, `pairs.csv` = paired volumes or short-axis stacks (see
                                                # Datasets)
    c.data.image_size = (128, 128)  # network input size (2D or 3D)
    c.data.synthetic_subjects = 40  # number of phantom subjects (split 60/20/20 by subject)
    c.data.slices_per_subject = 3   # short-axis slices per ACDC-like phantom subject
    c.data.folds = 0                # k-fold cross-validation by subject (>= 3; 0 = the layout's own split)
                                    # run k tests fold k, validates on fold k + 1 (mod F) and trains on the rest (see
                                    # Reproducing)
    c.data.fold = 0                 # with data.folds: the test fold (val = the next fold, train = the rest)
    c.data.centre = "label"         # ACDC crop centre: "label" (ED myocardium centroid) or "images" (where ED and ES differ most)
                                    # `images` needs no label (smoothed over 10 mm; see Results on real ACDC for what
                                    # it costs)
    c.data.structures = "auto"      # scored label values, "name=label,..." ("auto": ACDC rv=1,myo=2,lv=3; CAMUS lv=1,myo=2,la=3)
                                    # `pairs.csv`: myo=2; `myo` is the headline structure (see Evaluation)
    c.data.noise_scale = 1.0        # phantoms: multiplies the noise std (Rician sigma / speckle std); 0 = noise-free
    c.data.order = "host"           # batch draws: "host" (numpy default_rng([seed, step]); the order of every run
                                    # before this key) or "device" (jax.random inside the compiled steps, from the
                                    # seed and the step in the state: no host work per step; other batches than "host")
    c.data.on_device = "auto"       # training images on the devices: "auto" (when they fit), "device", "host"
                                    # `device`: placed once on every device, batches gathered there; `host`: numpy
                                    # gathers each batch and copies it; `auto`: on the devices when they take at most
                                    # a quarter of one device's memory (2 GiB where the device does not say), except
                                    # on a CPU with steps_per_call=1; the choice is printed at start

    c.eval = ml_collections.ConfigDict()  # the test evaluation and the periodic validation (see Evaluation)
    c.eval.batch_size = 8           # pairs per inference batch
    c.eval.label_rule = "threshold" # "threshold": linear-warped mask > 0.5; "reference": > 0 (authors)
    c.eval.empty_penalty = "nan"    # surface metrics of an empty warped structure: "nan" (counted as n_nan) or "diagonal"
                                    # (`nan`: left out of the means; `diagonal`: the crop's diagonal in px and mm)
    c.eval.val_pairs = 32           # validation pairs used for the periodic Dice (0 = all)
    c.eval.sparsification_steps = 50  # fractions removed in the sparsification curve (AUSE)
    c.eval.split = "test"           # pairs --mode=eval scores: "test" (the test split) or "all" (every pair of data.root)
                                    # `all`: a trained network tested on another dataset, with --out (training refuses it)

    c.elastix = ml_collections.ConfigDict()  # method="elastix": B-spline registration per pair (elastix.py)
    c.elastix.metric = "mean_squares"  # "mean_squares", "mutual_information" (Mattes) or "ncc"
    c.elastix.iterations = 250      # optimiser iterations per resolution level
    c.elastix.resolutions = 3       # pyramid levels (images smoothed and grid coarsened by 2 per level)
    c.elastix.grid_spacing = 8.0    # final B-spline control-point spacing, in voxels
    c.elastix.samples = 2048        # random voxels sampled per iteration (new ones each iteration)
    c.elastix.threads = 1           # elastix threads; results depend on the count, so it is fixed
    return c
