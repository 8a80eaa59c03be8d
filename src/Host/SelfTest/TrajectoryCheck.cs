using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Abstractions;
using OrtFinetune.Host.Plugins;
using OrtFinetune.Host.Training;
using OrtFinetune.Training.Compiler.Artifacts;
using OrtFinetune.Training.Compiler.Optimizers;
using OrtFinetune.Training.Runtime;

namespace OrtFinetune.Host.SelfTest;

/// <summary>
/// A short training run whose every per-step input changes: vit-tiny at 32 px from the same weights and
/// batches, AdamW with warm-up and cosine, two micro-batches accumulated per step, and under 16-mixed a loss
/// scale that grows during the run. Records the losses and, through <see cref="StepInputProbe"/>, the
/// learning rate, step, loss scale, gradient divisor and accumulation reset the device really read, next to
/// the values the host meant.
/// </summary>
public static class TrajectoryCheck
{
    public const int Batch = 8, Accumulate = 2, Classes = 10, Seed = 7;

    public sealed class Step
    {
        public double Loss { get; set; }
        public double GradNorm { get; set; }
        public float LearningRate { get; set; }
        public float? LearningRateRead { get; set; }
        public long StepMeant { get; set; }
        public long? StepRead { get; set; }
        public float LossScale { get; set; }
        public float? LossScaleRead { get; set; }
        public float? GradScaleRead { get; set; }
        /// <summary>Whether each micro-batch read lazy_reset_grad as true on the first and false on the others.</summary>
        public bool ResetReadAsMeant { get; set; }
        public bool Finite { get; set; }
    }

    public sealed class Trajectory
    {
        public string Precision { get; set; } = "";
        public string Device { get; set; } = "";
        public List<Step> Steps { get; set; } = [];
    }

    public static PrecisionOptions Options(string precision) =>
        precision == "16-mixed" ? new PrecisionOptions { Scaler = new LossScalerSettings { InitScale = 256, GrowthInterval = 4 } } : new PrecisionOptions();

    public static Trajectory Run(PluginCatalog catalog, DeviceSpec device, string precision, int steps)
    {
        var policy = RunSetup.ResolvePrecision(catalog, precision, device, "--precisions", Options(precision));
        var setup = RunSetup.Build(catalog, new RunSetup.Request
        {
            Model = "vit-tiny", Classes = Classes, ImageSize = 32, Seed = Seed, Policy = policy,
            Optimizer = new OptimizerOptions { Type = "adamw", WeightDecay = 0.05 },
        }, device);
        StepInputProbe.AddTo(setup.Artifacts.TrainingModel);
        StepInputProbe.AddTo(setup.Optimizer);
        var c = setup.Artifacts;
        using var trainer = new Trainer(c.TrainingModel, c.EvalModel, setup.Optimizer, c.Parameters, c.Buffers,
            new TrainerOptions { Device = device, LossScaling = policy.LossScaling });

        // Four fixed micro-batches, cycled: the run memorizes them, so the loss moves with every update.
        var rng = new Random(Seed);
        long[] dims = [Batch, setup.Model.Channels, setup.Model.ImageSize, setup.Model.ImageSize];
        var batches = Enumerable.Range(0, 4).Select(_ =>
        {
            var x = new float[dims.Aggregate(1L, (a, b) => a * b)];
            for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
            var y = Enumerable.Range(0, Batch).Select(_ => (long)rng.Next(Classes)).ToArray();
            return (X: x, Y: y);
        }).ToList();

        var schedule = Schedules.Create("cosine", 1e-3, steps, 5);
        var result = new Trajectory { Precision = policy.Name, Device = device.ToString() };
        int micro = 0;
        for (int s = 0; s < steps; s++)
        {
            var step = new Step { ResetReadAsMeant = true, LossScale = trainer.Scaler?.Scale ?? 1 };
            trainer.LazyResetGrad();
            for (int k = 0; k < Accumulate; k++, micro++)
            {
                var (xs, ys) = batches[micro % batches.Count];
                using var x = OrtValue.CreateTensorValueFromMemory(xs, dims);
                using var y = OrtValue.CreateTensorValueFromMemory(ys, [Batch]);
                step.Loss += trainer.TrainStep([x], y).Loss / Accumulate;
                var read = trainer.LastProbe;
                step.ResetReadAsMeant &= read.LazyResetGrad == (k == 0);
                step.LossScaleRead = read.LossScale;
            }
            step.LearningRate = (float)schedule.At(trainer.Step);
            trainer.SetLearningRate(step.LearningRate);
            step.StepMeant = trainer.Step + 1;
            var o = trainer.OptimizerStep();
            var p = trainer.LastProbe;
            step.Finite = o.AllFinite;
            step.GradNorm = o.GradNorm;
            step.LearningRateRead = p.LearningRate;
            step.StepRead = p.Step;
            step.GradScaleRead = p.GradScale;
            result.Steps.Add(step);
        }
        return result;
    }
}
