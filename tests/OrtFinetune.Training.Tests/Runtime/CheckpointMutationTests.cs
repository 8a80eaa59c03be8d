using OrtFinetune.Onnx;
using OrtFinetune.Training.Runtime;
using Xunit.Abstractions;

namespace OrtFinetune.Training.Tests.Runtime;

/// <summary>Seeded mutations of a valid checkpoint: a correct read or a CheckpointException, never another exception.</summary>
public class CheckpointMutationTests(ITestOutputHelper log) : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ortfinetune-ckmut-").FullName;
    public void Dispose() => Directory.Delete(_dir, true);

    [Fact]
    public void MutatedCheckpointsReadOrFailCleanly()
    {
        var ck = new CheckpointFile();
        ck.Meta["step"] = "12";
        ck.Meta["fingerprint"] = "w:float[4,3]";
        ck.Tensors.Add(Tensor.Float("param/w", Enumerable.Range(0, 12).Select(i => (float)i).ToArray(), 4, 3));
        ck.Tensors.Add(Tensor.Float("optim/w.exp_avg", new float[12], 4, 3));
        var good = Path.Combine(_dir, "good.ckpt");
        ck.Save(good);
        var seed = File.ReadAllBytes(good);
        var rng = new Random(77);
        int ok = 0, rejected = 0;
        var path = Path.Combine(_dir, "m.ckpt");
        for (int i = 0; i < 2000; i++)
        {
            var b = (byte[])seed.Clone();
            switch (rng.Next(4))
            {
                case 0: for (int k = rng.Next(1, 6); k > 0; k--) b[rng.Next(b.Length)] ^= (byte)(1 << rng.Next(8)); break;
                case 1: b = b[..rng.Next(b.Length)]; break;
                case 2: BitConverter.GetBytes(rng.Next(2) == 0 ? long.MaxValue - rng.Next(1000) : rng.NextInt64(-5, seed.Length * 2)).CopyTo(b, 8); break;
                default:
                {
                    // change a digit inside the JSON header (offsets, lengths, shapes, dtype)
                    int at = rng.Next(16, 16 + (int)BitConverter.ToInt64(seed, 8));
                    if (b[at] is >= (byte)'0' and <= (byte)'9') b[at] = (byte)('0' + rng.Next(10)); else b[at] = (byte)"0123456789-,]}\""[rng.Next(15)];
                    break;
                }
            }
            File.WriteAllBytes(path, b);
            try { CheckpointFile.Load(path); ok++; }
            catch (CheckpointException) { rejected++; }
            catch (Exception e) { Assert.Fail($"mutation {i} (seed 77) escaped: {e}"); }
        }
        log.WriteLine($"2000 mutations: {ok} read, {rejected} rejected with CheckpointException");
    }
}
